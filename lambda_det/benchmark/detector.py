"""What a whole Mask R-CNN costs with each Table 6 backbone, next to Detectron2's own R-101-FPN:
training iteration time (forward, backward, optimizer step at learning rate 0), inference time,
peak training memory, parameters, GFLOPs, and where the forward's time goes (stem, res2..res5,
FPN, RPN, ROI heads).
Used by ``tools/benchmark_detector.py``.

One process, models interleaved: every round runs each model's step once, in a rotated order. Inputs are synthetic
(uniform-noise images with 8 box+mask instances each, already at the size measured), so no dataset
is needed; inference runs at the test-time maximum of proposals and detections (no NMS, no score
threshold, ``lambda_det.analysis.worst_case``), so randomly initialized heads do the same work for
every model. Single-process stand-ins for the distributed recipe: synchronized BN becomes BN (the
same arithmetic in one process), and mixed precision runs only with ``amp`` on CUDA.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.modeling.backbone.resnet import BottleneckBlock
from detectron2.solver import build_optimizer
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from ..analysis import count_flops, count_parameters, worst_case
from ..config import add_lambda_config, load_config
from ..errors import UserError
from ..model_zoo import get_config_file
from ..utils.markdown import markdown_table
from .plotting import grouped_bars
from .timing import (
    INTERLEAVING, environment_summary, interleaved, milliseconds, peak_memory_bytes, result_paths, run_worker, spread, synchronize,
    write_results,
)


@dataclasses.dataclass
class DetectorModel:
    name: str
    config: str  # a path, or "model_zoo:<name>" for Detectron2's own configs
    opts: Sequence[str] = ()


def table6_models() -> List[DetectorModel]:
    """The six Table 6 rows, the conv twins of the two LambdaResNets (the same network and SE with
    VARIANT conv: the comparison that isolates the lambda layers), and Detectron2's R-101-FPN."""
    rows = [
        ("ResNet-101", "mask_rcnn_R_101_FPN_paper.yaml"),
        ("ResNet-101 + SE", "mask_rcnn_R_101_SE_FPN_paper.yaml"),
        ("LambdaResNet-101", "mask_rcnn_LambdaR_101_FPN_paper.yaml"),
        ("ResNet-152", "mask_rcnn_R_152_FPN_paper.yaml"),
        ("ResNet-152 + SE", "mask_rcnn_R_152_SE_FPN_paper.yaml"),
        ("LambdaResNet-152", "mask_rcnn_LambdaR_152_FPN_paper.yaml"),
    ]
    coco = "COCO-InstanceSegmentation/"
    models = [DetectorModel(name, get_config_file(coco + file)) for name, file in rows]
    for depth in (101, 152):
        models.append(DetectorModel(f"LambdaResNet-{depth} conv twin", get_config_file(f"{coco}mask_rcnn_LambdaR_{depth}_FPN_paper.yaml"),
                                    ("MODEL.LAMBDA_RESNET.VARIANT", "conv")))
    models.append(DetectorModel("Detectron2 R-101-FPN", "model_zoo:COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml"))
    return models


def quick_models() -> List[DetectorModel]:
    """A small LambdaResNet and its conv twin on the toy config: the whole machinery in seconds."""
    toy = get_config_file("Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml")
    small = ("MODEL.LAMBDA_RESNET.STAGE_BLOCKS", "[1,1,1,1]", "MODEL.LAMBDA_RESNET.WIDTH_PER_GROUP", "32",
             "MODEL.FPN.OUT_CHANNELS", "32", "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32")
    return [DetectorModel("toy LambdaResNet", toy, small),
            DetectorModel("toy LambdaResNet conv twin", toy, (*small, "MODEL.LAMBDA_RESNET.LAYOUT", '["C","C","C","C"]'))]


def build_cfg(model: DetectorModel, size: int, device: str, amp: bool):
    if model.config.startswith("model_zoo:"):
        # imported here: detectron2.model_zoo imports pkg_resources, which warns on every import,
        # and only Detectron2's own configs need it
        from detectron2 import model_zoo as detectron2_model_zoo

        cfg = add_lambda_config(get_cfg())
        cfg.merge_from_file(detectron2_model_zoo.get_config_file(model.config.split(":", 1)[1]))
        cfg.merge_from_list(list(model.opts))
    else:
        cfg = load_config(model.config, model.opts)
    # one process: synchronized BN computes what BN computes
    if "LAMBDA_RESNET" in cfg.MODEL and cfg.MODEL.LAMBDA_RESNET.NORM == "SyncBN":
        cfg.MODEL.LAMBDA_RESNET.NORM = "BN"
    if cfg.MODEL.FPN.NORM == "SyncBN":
        cfg.MODEL.FPN.NORM = "BN"
    cfg.MODEL.DEVICE = device
    cfg.SOLVER.AMP.ENABLED = amp
    cfg.INPUT.MIN_SIZE_TEST = size
    cfg.INPUT.MAX_SIZE_TEST = size
    # learning rate 0: the optimizer does all of its arithmetic but the weights stay put, so every
    # round times the same model, and a randomly initialized one cannot diverge (at batch 1 the
    # recipes' learning rate, scaled or not, turns it to NaN within a few rounds)
    cfg.SOLVER.BASE_LR = 0.0
    worst_case(cfg)
    cfg.freeze()
    return cfg


def zero_init_residual_branches(model: torch.nn.Module) -> None:
    """Start every Detectron2 bottleneck's residual branch at zero (the gamma of its last norm), as
    our LambdaResNets and Goyal et al. (2017) do. Detectron2 leaves it at one, which it can afford
    because it starts from ImageNet weights: from random weights, 33 blocks of FrozenBN with identity
    statistics grow R-101's features by orders of magnitude, and the RPN then yields no proposals, so
    the heads would do no work. The operations timed are the same either way."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, BottleneckBlock):
                module.conv3.norm.weight.zero_()


def synthetic_batch(height: int, width: int, *, num_classes: int, num_images: int = 1, device: torch.device | str = "cpu",
                    seed: int = 0) -> List[dict]:
    """Detectron2 training inputs: noise images of height x width with 8 box+mask instances each,
    of classes drawn below ``num_classes``."""
    g = torch.Generator().manual_seed(seed)
    extent = torch.tensor([width, height], dtype=torch.float32)  # (x, y)
    out = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8)
        corners = torch.rand(8, 2, generator=g) * extent * 0.7
        extents = (torch.rand(8, 2, generator=g) * 0.25 + 0.05) * extent
        boxes = torch.minimum(torch.cat([corners, corners + extents], dim=1), (extent - 1).repeat(2))
        masks = torch.zeros(8, height, width, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.round().int().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst = Instances((height, width), gt_boxes=Boxes(boxes), gt_classes=torch.randint(0, num_classes, (8,), generator=g),
                         gt_masks=BitMasks(masks))
        out.append({"image": image.to(device), "instances": inst.to(device), "height": height, "width": width})
    return out


class Runner:
    """A model with its optimizer and inputs: one training iteration, one inference."""

    def __init__(self, model_def: DetectorModel, size: int, batch: int, device: torch.device, amp: bool) -> None:
        self.name = model_def.name
        self.cfg = build_cfg(model_def, size, device.type, amp)
        torch.manual_seed(0)
        self.model = build_model(self.cfg)
        zero_init_residual_branches(self.model)
        self.optimizer = build_optimizer(self.cfg, self.model)
        self.inputs = synthetic_batch(size, size, num_classes=self.cfg.MODEL.ROI_HEADS.NUM_CLASSES, num_images=batch, device=device)
        self.eval_inputs = [{"image": d["image"], "height": size, "width": size} for d in self.inputs]
        self.device = device
        self.amp = amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None

    def check_worst_case(self) -> None:
        """The timings mean what they say only if the heads get the maximum of proposals and detections."""
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
            found = [len(out["instances"]) for out in self.model(self.eval_inputs)]
        expected = self.cfg.TEST.DETECTIONS_PER_IMAGE
        if any(n != expected for n in found):
            raise RuntimeError(f"{self.name}: {found} detections per image instead of {expected} at the worst case; "
                               "its randomly initialized features are not finite enough for the heads")

    def train_step(self) -> None:
        self.model.train()
        with EventStorage(0), torch.autocast(self.device.type, enabled=self.amp):
            losses = sum(self.model(self.inputs).values())
        if self.scaler is not None:
            self.scaler.scale(losses).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            losses.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def inference(self) -> None:
        self.model.eval()
        with torch.no_grad(), torch.autocast(self.device.type, enabled=self.amp):
            self.model(self.eval_inputs)

    def parts(self) -> Dict[str, torch.nn.Module]:
        """stem, res2..res5, FPN (the FPN module less its bottom-up backbone), RPN, ROI heads."""
        backbone = self.model.backbone
        bottom_up = getattr(backbone, "bottom_up", backbone)
        parts = {name: module for name, module in bottom_up.named_children() if name == "stem" or name.startswith("res")}
        parts["backbone + FPN"] = backbone
        parts["RPN"] = self.model.proposal_generator
        parts["ROI heads"] = self.model.roi_heads
        return parts

    def forward_breakdown(self, training: bool) -> Dict[str, float]:
        """Seconds of each part's forward in one (training or inference) forward."""
        spent: Dict[str, float] = {}
        starts: Dict[str, float] = {}
        handles = []
        for name, module in self.parts().items():
            def pre(_module, _inputs, name=name):
                synchronize(self.device)
                starts[name] = time.perf_counter()

            def post(_module, _inputs, _outputs, name=name):
                synchronize(self.device)
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - starts[name]

            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        try:
            if training:
                self.train_step()
            else:
                self.inference()
        finally:
            for handle in handles:
                handle.remove()
        stages = sum(v for k, v in spent.items() if k == "stem" or k.startswith("res"))
        spent["FPN"] = spent.pop("backbone + FPN", 0.0) - stages
        return spent


def detector_memory(cell: dict, common: dict) -> dict:
    """Peak memory of one training iteration (after a warm-up one): run in a worker on the CPU."""
    device = torch.device(common["device"])
    runner = Runner(DetectorModel(**cell["model"]), cell["size"], common["batch"], device, common["amp"])
    runner.train_step()
    return {"peak_bytes": peak_memory_bytes(runner.train_step, device)}


def gflops(runner: Runner) -> Dict[str, float]:
    """Whole-model and backbone GFLOPs of the inference forward (Detectron2's FlopCountAnalysis)."""
    runner.model.eval()
    report = count_flops(runner.model, [runner.eval_inputs[:1]], warnings=False)
    summary = report.summary()
    return {"model_gflops": summary["model_gflops"], "backbone_gflops": summary["bottom_up_gflops"],
            "backbone_fpn_gflops": summary["backbone_fpn_gflops"]}


def detector_benchmark_paths(out_dir: Path, device: str, tag: str = "") -> Dict[str, Path]:
    return result_paths(out_dir, f"detector_{torch.device(device).type}{tag}", plot=True)


def run_detector_benchmark(
    out_dir: Path, sizes: Sequence[int] = (1024, 512), models: Optional[Sequence[DetectorModel]] = None,
    repeats: int = 3, batch: int = 1, device: str = "cpu", amp: bool = False, flops: bool = True, tag: str = "",
    log: Callable[[str], None] = print,
) -> dict:
    dev = torch.device(device)
    if amp and dev.type != "cuda":
        raise UserError("--amp needs --device cuda (mixed precision on CPUs is not what GPUs run)")
    models = list(models or table6_models())
    log(f"{len(models)} models at {list(sizes)} on {dev} ({environment_summary(dev)}), batch {batch}, {repeats} rounds")
    by_model_size: Dict[Tuple[str, int], dict] = {}
    for size in sizes:
        runners = [Runner(m, size, batch, dev, amp) for m in models]
        for r in runners:
            r.check_worst_case()
            by_model_size[r.name, size] = {"model": r.name, "size": size, **count_parameters(r.model),
                                           "test_proposals": r.cfg.MODEL.RPN.POST_NMS_TOPK_TEST,
                                           "test_detections": r.cfg.TEST.DETECTIONS_PER_IMAGE}
        for mode, step in (("train", "train_step"), ("inference", "inference")):
            if mode == "inference":  # the training rounds moved the BN statistics the inference uses
                for r in runners:
                    r.check_worst_case()
            timings = interleaved({r.name: getattr(r, step) for r in runners}, repeats, dev)
            for r in runners:
                record = by_model_size[r.name, size]
                record[mode] = timings[r.name].to_dict()
                log(f"{size}x{size} {r.name}: {mode} {spread(record[mode])}")
        for r in runners:
            record = by_model_size[r.name, size]
            record["breakdown_train_forward"] = r.forward_breakdown(training=True)
            record["breakdown_inference"] = r.forward_breakdown(training=False)
            if flops:
                record.update(gflops(r))
        del runners
    log("peak training memory ...")
    cells = [{"model": dataclasses.asdict(m), "size": size} for size in sizes for m in models]
    common = {"device": device, "batch": batch, "amp": amp}
    memory = run_worker("detector_memory", cells, common) if dev.type == "cpu" else [
        dict(cell=c, **detector_memory(c, common)) for c in cells]
    for m in memory:
        record = by_model_size[m["cell"]["model"]["name"], m["cell"]["size"]]
        record["train_peak_bytes"] = m.get("peak_bytes")
        if "failed" in m:
            record["memory_failed"] = m["failed"]
    records = list(by_model_size.values())
    result = {"environment": environment_summary(dev), "batch": batch, "repeats": repeats, "amp": amp,
              "models": [dataclasses.asdict(m) for m in models], "records": records, "targets": targets(records)}
    paths = detector_benchmark_paths(out_dir, device, tag)
    largest = max(sizes)
    rows = [x for x in records if x["size"] == largest]
    write_results(paths, result, report(result), lambda png: grouped_bars(
        [x["model"] for x in rows], {f"train ({largest})": [x["train"]["median_s"] for x in rows],
                                     f"inference ({largest})": [x["inference"]["median_s"] for x in rows]},
        png, f"Mask R-CNN time per iteration ({dev.type}, batch {batch})", "seconds"))
    log(report(result))
    log(f"wrote {paths['json']}, .md, .png")
    return result


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def targets(records: List[dict]) -> List[dict]:
    """Each LambdaResNet against its conv twin (same network, SE, everything but the lambda layers)."""
    out = []
    for record in records:
        twin = next((x for x in records if x["model"] == f"{record['model']} conv twin" and x["size"] == record["size"]), None)
        if twin is None:
            continue
        entry = {"model": record["model"], "size": record["size"],
                 "train_ratio": record["train"]["median_s"] / twin["train"]["median_s"],
                 "inference_ratio": record["inference"]["median_s"] / twin["inference"]["median_s"]}
        if record.get("train_peak_bytes") and twin.get("train_peak_bytes"):
            entry["train_memory_ratio"] = record["train_peak_bytes"] / twin["train_peak_bytes"]
        out.append(entry)
    return out


def report(result: dict) -> str:
    env = result["environment"]
    head = ["model", "size", "params (M) all / backbone", "GFLOPs all / backbone", "train iteration", "inference",
            "peak train memory"]
    rows = []
    for r in result["records"]:
        flops = f"{r['model_gflops']:.3g} / {r['backbone_gflops']:.3g}" if "model_gflops" in r else "-"
        memory = _size(r["train_peak_bytes"]) if r.get("train_peak_bytes") else r.get("memory_failed", "-")
        rows.append([r["model"], r["size"], f"{r['model_params_m']:.1f} / {r['bottom_up_params_m']:.1f}", flops,
                     spread(r["train"]), spread(r["inference"]), memory])
    def values(key: str) -> str:
        return "/".join(str(v) for v in sorted({r.get(key, "?") for r in result["records"]}, key=str))

    text = (f"# Mask R-CNN with the Table 6 backbones ({env['device']})\n\n`{json.dumps(env)}`; batch "
            f"{result['batch']}, synthetic inputs, models interleaved, median (range) of {result['repeats']} rounds "
            f"({INTERLEAVING}); "
            "train = forward + backward + SGD step (at learning rate 0); inference at the test-time maximum of "
            f"proposals ({values('test_proposals')}) and detections ({values('test_detections')}); peak memory of one training iteration (RSS on CPUs). GFLOPs: Detectron2's "
            "FlopCountAnalysis of the inference forward (one multiply-add = one flop), backbone = without FPN.\n\n"
            + markdown_table(head, rows))
    parts_head = ["model", "size", "mode", "stem", "res2", "res3", "res4", "res5", "FPN", "RPN", "ROI heads"]
    part_rows = []
    for r in result["records"]:
        for mode, key in (("train forward", "breakdown_train_forward"), ("inference", "breakdown_inference")):
            b = r.get(key, {})
            part_rows.append([r["model"], r["size"], mode] + [f"{milliseconds(b[p])} ms" if p in b else "-" for p in parts_head[3:]])
    text += "\n## Where the forward's time goes (one instrumented run)\n\n" + markdown_table(parts_head, part_rows)
    if result["targets"]:
        text += "\n## LambdaResNets against their conv twins (same network and SE, 3x3 convs instead of lambda layers)\n\n"
        text += markdown_table(["model", "size", "train time ratio", "inference time ratio", "peak train memory ratio"],
                         [[t["model"], t["size"], f"{t['train_ratio']:.2f}x", f"{t['inference_ratio']:.2f}x",
                           f"{t['train_memory_ratio']:.2f}x" if "train_memory_ratio" in t else "-"] for t in result["targets"]])
    return text


__all__ = ["DetectorModel", "Runner", "detector_benchmark_paths", "detector_memory", "quick_models", "report",
           "run_detector_benchmark", "synthetic_batch", "table6_models"]
