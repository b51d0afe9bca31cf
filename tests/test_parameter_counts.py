"""The parameter counts LambdaNetworks reports for its ImageNet models (App. D's architectures), from
our architecture, within 1%.

Counts are of the ImageNet form: backbone + global pool + 1000-way FC, as the paper reports them.
Two rows need facts the paper does not state, found by recomputing its counts in closed form:
- the LambdaResNet-101/152 counts (and their -C4 forms) are reached only when the conv blocks of
  c2 and c3 carry SE and those of c4 do not; without SE they come out 0.6M / 1.2M low
  (checked below, so a change in SE placement cannot pass silently);
- the u = 4 row is reached only with a 7x7 scope (23x23 would give 16.5M).
"""
import pytest

from lambda_det.modeling import imagenet_num_params

ALL_STAGES = ["res2", "res3", "res4", "res5"]
C2_C3 = ["res2", "res3"]

PAPER_TABLE = [
    ("ResNet-50", dict(depth=50, variant="conv"), 25.6),
    ("ResNet-50, every 3x3 a lambda layer", dict(depth=50, variant="all-lambda"), 15.0),
    ("same, u=4, 7x7 scope", dict(depth=50, variant="all-lambda", dim_u=4, scope=7), 16.0),
    ("ResNet-101", dict(depth=101, variant="conv"), 44.6),
    ("ResNet-101 + SE", dict(depth=101, variant="conv", se_stages=ALL_STAGES), 63.6),
    ("LambdaResNet-101", dict(depth=101, variant="lambda", se_stages=C2_C3), 36.9),
    ("LambdaResNet-101-C4", dict(depth=101, variant="lambda-c4", se_stages=C2_C3), 26.0),
    ("ResNet-152", dict(depth=152, variant="conv"), 60.2),
    ("ResNet-152 + SE", dict(depth=152, variant="conv", se_stages=ALL_STAGES), 86.6),
    ("LambdaResNet-152", dict(depth=152, variant="lambda", se_stages=C2_C3), 51.4),
    ("LambdaResNet-152-C4", dict(depth=152, variant="lambda-c4", se_stages=C2_C3), 35.1),
]


@pytest.mark.parametrize("name,kwargs,paper_millions", PAPER_TABLE, ids=[row[0] for row in PAPER_TABLE])
def test_parameter_count_matches_the_paper(name, kwargs, paper_millions):
    count = imagenet_num_params(**kwargs) / 1e6
    assert count == pytest.approx(paper_millions, rel=0.01), f"{name}: {count:.2f}M vs paper {paper_millions}M"


@pytest.mark.parametrize(
    "kwargs,paper_millions",
    [
        (dict(depth=101, variant="lambda"), 36.9),  # no SE: 0.6M low
        (dict(depth=50, variant="all-lambda", dim_u=4, scope=23), 16.0),  # 23x23 with u=4: 16.5M
    ],
)
def test_the_inferred_facts_are_needed(kwargs, paper_millions):
    count = imagenet_num_params(**kwargs) / 1e6
    assert abs(count - paper_millions) / paper_millions > 0.01
