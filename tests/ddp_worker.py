"""Run by tests/test_workflows.py: train with N CPU processes (gloo), each rank saves its weights and
the number of CPU threads it was given."""
import sys

import torch
from detectron2.engine import launch
from detectron2.utils import comm

import lambda_det  # noqa: F401
from lambda_det.engine import Trainer, argument_parser, setup_cfg


def train_and_dump(args, out_dir):
    cfg = setup_cfg(args)
    rank = comm.get_rank()
    with open(f"{out_dir}/rank{rank}_threads.txt", "w") as f:
        f.write(str(torch.get_num_threads()))
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{out_dir}/rank{rank}_init.pth")
    trainer.train()
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, f"{out_dir}/rank{rank}.pth")


if __name__ == "__main__":
    out_dir = sys.argv[1]
    args = argument_parser().parse_args(sys.argv[2:])
    launch(train_and_dump, args.num_gpus, num_machines=1, machine_rank=0, dist_url="auto", args=(args, out_dir))
