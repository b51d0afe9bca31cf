"""LambdaResNet backbones in Detectron2: shapes, family members, freezing, SyncBN, tracing, config errors."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import small_cfg
from detectron2.layers import FrozenBatchNorm2d, get_norm
from detectron2.structures import ImageList
from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from detectron2.utils.events import EventStorage

import lambda_det
from lambda_det.benchmark.detector import synthetic_batch
from lambda_det.layers import LambdaLayer
from lambda_det.modeling import LambdaBottleneck, build_lambda_resnet
from lambda_det.modeling.lambda_resnet import lambda_resnet_config
from lambda_det.modeling.layouts import PAPER_C4_LAMBDA_BLOCKS, STAGE_BLOCKS


def _blocks(backbone):
    return {name: list(getattr(backbone, name)) for name in backbone.stage_names}


def test_import_twice_and_reload_keep_the_registry_working():
    import lambda_det.modeling as modeling

    importlib.reload(modeling)
    importlib.reload(lambda_det)
    modeling.register_backbones()
    assert "build_lambda_resnet_fpn_backbone" in BACKBONE_REGISTRY
    assert "build_lambda_resnet_backbone" in BACKBONE_REGISTRY


@pytest.mark.parametrize("height,width", [(64, 96), (67, 101), (150, 45)])
def test_fpn_features_for_non_square_and_unaligned_sizes(height, width):
    cfg = small_cfg()
    backbone = build_backbone(cfg).eval()
    images = ImageList.from_tensors([torch.randn(3, height, width)], backbone.size_divisibility)
    ph, pw = images.tensor.shape[-2:]
    assert ph % 32 == 0 and pw % 32 == 0  # Detectron2 pads to the FPN's divisibility
    with torch.no_grad():
        features = backbone(images.tensor)
    shapes = backbone.output_shape()
    assert set(features) == {"p2", "p3", "p4", "p5", "p6"}
    for name, feature in features.items():
        stride = shapes[name].stride
        assert feature.shape == (1, shapes[name].channels, -(-ph // stride), -(-pw // stride)), name


def test_bare_backbone_strides_channels_and_odd_sizes():
    cfg = small_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_lambda_resnet_backbone"
    backbone = build_backbone(cfg).eval()
    shapes = backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert {k: v.channels for k, v in shapes.items()} == {"res2": 64, "res3": 128, "res4": 256, "res5": 512}
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, 75, 53))
    for name, tensor in out.items():
        s = shapes[name].stride
        assert tensor.shape == (2, shapes[name].channels, -(-75 // s), -(-53 // s)), name


def test_block_structure_follows_the_paper():
    model = build_lambda_resnet(depth=50, variant="lambda", se_stages=["res2", "res3"])
    stem = model.stem
    assert [c.weight.shape[0] for c in stem.convs] == [32, 32, 64, 64]
    assert [c.stride[0] for c in stem.convs] == [2, 1, 1, 2] and stem.stride == 4
    blocks = _blocks(model)
    assert [len(b) for b in blocks.values()] == [3, 4, 6, 3]
    # lambda blocks: c4 block 3 and all of c5; SE only on conv blocks of the SE stages
    assert [b.use_lambda for b in blocks["res4"]] == [False, False, True, False, False, False]
    assert all(b.use_lambda for b in blocks["res5"])
    assert all(b.se is not None for b in blocks["res2"] + blocks["res3"])
    assert all(b.se is None for b in blocks["res4"] + blocks["res5"])
    assert blocks["res2"][0].se.reduce.out_channels == 64  # 0.25 x 256 output channels
    # a stride-2 lambda block: lambda layer then 3x3/2 average pool; ResNet-D avg-pool shortcut
    first_c5 = blocks["res5"][0]
    assert isinstance(first_c5.conv2, LambdaLayer) and first_c5.conv2.stride == 2
    assert isinstance(first_c5.conv2.pool, torch.nn.AvgPool2d) and first_c5.conv2.pool.kernel_size == 3
    assert isinstance(first_c5.shortcut[0], torch.nn.AvgPool2d)
    # zero-initialized gamma of the last norm of every block
    assert all(float(b.conv3.norm.weight.abs().sum()) == 0 for stage in blocks.values() for b in stage)


# every depth with the paper's placement; the -C4 rule (all of c4) on the depths the paper reports it for
DEEP_MEMBERS = [(depth, "lambda") for depth in sorted(STAGE_BLOCKS)] + [(50, "lambda-c4"), (101, "lambda-c4"), (152, "lambda-c4")]


@pytest.mark.parametrize("depth,variant", DEEP_MEMBERS)
def test_deep_members_place_lambda_layers_as_the_paper(depth, variant):
    model = build_lambda_resnet(depth=depth, variant=variant, out_features=["res5"])
    blocks = _blocks(model)
    assert tuple(len(b) for b in blocks.values()) == STAGE_BLOCKS[depth]
    lambda_c4 = [i + 1 for i, b in enumerate(blocks["res4"]) if b.use_lambda]
    expected = PAPER_C4_LAMBDA_BLOCKS[depth] if variant == "lambda" else tuple(range(1, STAGE_BLOCKS[depth][2] + 1))
    assert tuple(lambda_c4) == expected
    assert all(b.use_lambda for b in blocks["res5"])
    assert not any(b.use_lambda for b in blocks["res2"] + blocks["res3"])


FAMILY = {
    "lambda-hybrid-CCLL": dict(),
    "conv": dict(VARIANT="conv", LAYOUT=[]),
    "conv+SE": dict(VARIANT="conv", LAYOUT=[], SE_STAGES=["res2", "res3", "res4", "res5"]),
    "all-lambda": dict(VARIANT="all-lambda", LAYOUT=[]),
    "lambda-c4": dict(VARIANT="lambda-c4", LAYOUT=[]),
    "global-scope-u4": dict(SCOPE=0, GLOBAL_MAX_SIZE=16, DIM_U=4),
    "per-block-layout": dict(STAGE_BLOCKS=[1, 2, 2, 1], LAYOUT=["C", "CL", "LC", "L"]),
}


@pytest.mark.parametrize("member", sorted(FAMILY))
def test_mask_rcnn_training_step_for_each_family_member(member):
    # zero-init gammas make every residual branch's gradient exactly zero at the first step;
    # switched off here so the test sees gradients reach the lambda layers
    cfg = small_cfg(ZERO_INIT_RESIDUAL=False, **FAMILY[member])
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(synthetic_batch(96, 128, num_classes=3, num_images=2))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.backbone.bottom_up.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    lambda_layers = [m for m in model.modules() if isinstance(m, LambdaLayer)]
    if member.startswith("conv"):
        assert not lambda_layers
    else:
        assert lambda_layers and all(m.rel_pos_emb.grad.abs().sum() > 0 for m in lambda_layers)
    model.eval()
    with torch.no_grad():
        out = model([{"image": synthetic_batch(80, 112, num_classes=3)[0]["image"], "height": 80, "width": 112}])
    assert out[0]["instances"].image_size == (80, 112)


@pytest.mark.slow
@pytest.mark.parametrize("depth,variant", [(50, "lambda"), (101, "lambda"), (152, "lambda-c4")])
def test_mask_rcnn_training_step_deep_members(depth, variant):
    cfg = small_cfg(STAGE_BLOCKS=[], DEPTH=depth, VARIANT=variant, LAYOUT=[], WIDTH_PER_GROUP=64, DIM_K=16, SCOPE=23)
    cfg.MODEL.FPN.OUT_CHANNELS = 256
    model = build_model(cfg).train()
    with EventStorage():
        losses = model(synthetic_batch(128, 160, num_classes=3))
    total = sum(losses.values())
    total.backward()
    assert torch.isfinite(total)


def test_freeze_at_freezes_stem_and_stages_like_detectron2():
    cfg = small_cfg(NORM="BN")
    cfg.MODEL.BACKBONE.FREEZE_AT = 2  # stem and res2
    model = build_model(cfg).train()
    bottom_up = model.backbone.bottom_up
    for name, module in (("stem", bottom_up.stem), ("res2", bottom_up.res2)):
        assert all(not p.requires_grad for p in module.parameters()), name
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules()), name
        assert any(isinstance(m, FrozenBatchNorm2d) for m in module.modules()), name
    assert all(p.requires_grad for p in bottom_up.res3.parameters())
    frozen_before = {k: v.clone() for k, v in bottom_up.res2.state_dict().items()}
    with EventStorage():
        sum(model(synthetic_batch(96, 128, num_classes=3)).values()).backward()
    assert all(p.grad is None for p in bottom_up.stem.parameters())
    assert any(p.grad is not None for p in bottom_up.res3.parameters())
    # FrozenBN statistics do not move in training mode
    for k, v in bottom_up.res2.state_dict().items():
        assert torch.equal(v, frozen_before[k]), k


def test_freeze_at_freezes_lambda_layers_too():
    cfg = small_cfg(NORM="BN", LAYOUT=["C", "C", "L", "L"])
    cfg.MODEL.BACKBONE.FREEZE_AT = 4  # stem, res2, res3, res4 (res4 holds a lambda block)
    backbone = build_backbone(cfg).bottom_up
    layer = backbone.res4[0].conv2
    assert isinstance(layer, LambdaLayer)
    assert not layer.rel_pos_emb.requires_grad
    assert isinstance(layer.norm_q, FrozenBatchNorm2d) and isinstance(layer.norm_v, FrozenBatchNorm2d)
    assert backbone.res5[0].conv2.rel_pos_emb.requires_grad


def test_syncbn_from_config_and_by_conversion():
    cfg = small_cfg(NORM="SyncBN")
    backbone = build_backbone(cfg).bottom_up
    lambda_norms = [m.norm_q for m in backbone.modules() if isinstance(m, LambdaLayer)]
    assert lambda_norms and all(isinstance(n, torch.nn.SyncBatchNorm) for n in lambda_norms)
    converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_backbone(small_cfg(NORM="BN")))
    assert not any(type(m) is torch.nn.BatchNorm2d for m in converted.modules())
    assert sum(isinstance(m, torch.nn.SyncBatchNorm) for m in converted.modules()) > 10
    with torch.no_grad():  # single process: SyncBN computes like BN
        out = converted.eval()(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.parametrize("norm", ["LN", "naiveSyncBN"])
def test_every_norm_of_detectron2_builds_and_trains(norm):
    """NORM takes what Detectron2's get_norm knows, as its ResNet does: a training step runs with it,
    the lambda layers' query/value norms included."""
    backbone = build_backbone(small_cfg(NORM=norm)).train()
    lambda_norms = [m.norm_q for m in backbone.modules() if isinstance(m, LambdaLayer)]
    assert lambda_norms and all(type(n) is type(get_norm(norm, 8)) for n in lambda_norms)
    out = backbone(torch.randn(2, 3, 64, 64))
    sum(v.square().mean() for v in out.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n in lambda_norms for p in n.parameters())


def test_trace_gives_eager_outputs():
    cfg = small_cfg(NORM="BN", SCOPE=23)
    cfg.MODEL.BACKBONE.NAME = "build_lambda_resnet_backbone"
    backbone = build_backbone(cfg).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        traced = torch.jit.trace(backbone, x, strict=False, check_trace=False)
        other = torch.randn(1, 3, 96, 128)
        eager, got = backbone(other), traced(other)
    assert set(got) == set(eager)
    for name in eager:
        torch.testing.assert_close(got[name], eager[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(VARIANT="lamda", LAYOUT=[]), "MODEL.LAMBDA_RESNET.VARIANT='lamda'"),
        (dict(STAGE_BLOCKS=[], DEPTH=34, VARIANT="lambda", LAYOUT=[]), "MODEL.LAMBDA_RESNET.DEPTH=34"),
        (dict(SCOPE=4), "MODEL.LAMBDA_RESNET.SCOPE=4"),
        (dict(NORM="LayerNorm"), "MODEL.LAMBDA_RESNET.NORM='LayerNorm' is no norm of Detectron2's get_norm"),
        (dict(NORM=""), "MODEL.LAMBDA_RESNET.NORM='' is no norm"),
        (dict(IMPL="cuda"), "MODEL.LAMBDA_RESNET.IMPL='cuda'"),
        (dict(LAYOUT=["C", "C", "L"]), "MODEL.LAMBDA_RESNET.LAYOUT"),
        (dict(LAYOUT=["C", "C", "LL", "L"]), "for res4 has 2 letters; the stage has 1 blocks"),
        (dict(LAYOUT=["C", "C", "X", "L"]), "letters C"),
        (dict(SE_STAGES=["res6"]), "MODEL.LAMBDA_RESNET.SE_STAGES"),
        (dict(VARIANT="conv"), "only read with VARIANT='custom'"),
        (dict(VARIANT="lambda", LAYOUT=[]), "VARIANT='lambda' places lambda blocks as the paper"),
        (dict(DIM_K=0), "MODEL.LAMBDA_RESNET.DIM_K=0"),
        (dict(OUT_FEATURES=["res6"]), "MODEL.LAMBDA_RESNET.OUT_FEATURES"),
        (dict(OUT_FEATURES=["res4", "res5"]), "MODEL.FPN.IN_FEATURES"),
    ],
)
def test_invalid_config_values_fail_at_build_naming_the_key(overrides, message):
    cfg = small_cfg(**overrides)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        build_model(cfg)


def test_build_lambda_resnet_stores_numpy_values_as_plain_ones():
    """numpy numbers and arrays, alone or inside lists, reach the config as yacs' own types: a config
    holding numpy's could not be saved as YAML (Detectron2 writes config.yaml into every run)."""
    plain = dict(stage_blocks=[1, 1, 2, 1], layout=["C", "C", "CL", "L"], se_ratio=1.0, scope=7, position_bias=True,
                 out_features=["res4", "res5"])
    given = dict(stage_blocks=[np.int64(1), 1, np.int32(2), 1], layout=np.array(["C", "C", "CL", "L"]), se_ratio=np.int32(1),
                 scope=np.int64(7), position_bias=np.bool_(True), out_features=list(np.array(["res4", "res5"])))
    expected = lambda_resnet_config(variant="custom", **plain)
    got = lambda_resnet_config(variant="custom", **given)
    assert got.dump() == expected.dump()
    assert [type(n) for n in got.MODEL.LAMBDA_RESNET.STAGE_BLOCKS] == [int] * 4
    assert type(got.MODEL.LAMBDA_RESNET.SE_RATIO) is float and type(got.MODEL.LAMBDA_RESNET.POSITION_BIAS) is bool
    assert type(lambda_resnet_config(norm=np.str_("GN")).MODEL.LAMBDA_RESNET.NORM) is str
    assert sum(p.numel() for p in build_lambda_resnet(variant="custom", **given).parameters()) == sum(
        p.numel() for p in build_lambda_resnet(variant="custom", **plain).parameters())


def test_config_function_only_adds_nodes():
    from detectron2.config import get_cfg

    plain, extended = get_cfg(), get_cfg()
    lambda_det.add_lambda_config(extended)
    lambda_det.add_lambda_config(extended)  # idempotent
    assert "LAMBDA_RESNET" in extended.MODEL and "LSJ" in extended.INPUT

    def flatten(node, prefix=""):
        out = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    flat_plain, flat_ext = flatten(plain), flatten(extended)
    assert {k: flat_ext[k] for k in flat_plain} == flat_plain
    added = set(flat_ext) - set(flat_plain)
    assert added and all(k.startswith(("MODEL.LAMBDA_RESNET.", "INPUT.LSJ.")) for k in added)


def test_bottleneck_is_a_detectron2_cnn_block():
    block = LambdaBottleneck(64, 256, bottleneck_channels=64, stride=2, use_lambda=True, lambda_kwargs=dict(scope=3))
    assert block.freeze() is block
    assert not any(p.requires_grad for p in block.parameters())
    assert block(torch.randn(1, 64, 9, 9)).shape == (1, 256, 5, 5)
