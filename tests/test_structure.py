"""The package's shape: no import cycles (module-level or inside functions), configs that ship with
the package and are found without the checkout, an installed (non-editable) package that works."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import pytest
import torch

from conftest import REPO


def import_graph(root: Path) -> Dict[str, Set[str]]:
    """{module: modules of the same package it imports}, from every import statement of every file
    (at module level or inside a function), relative and absolute. A package is its __init__."""
    package = root.name
    modules = {}
    for path in root.rglob("*.py"):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        modules[".".join(parts)] = (path, is_package)

    def resolve(name: str) -> str:
        while name and name not in modules:  # "pkg.mod.attr" -> "pkg.mod"
            name = name.rpartition(".")[0]
        return name

    graph: Dict[str, Set[str]] = {}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - node.level + 1]
                    origin = ".".join(base + ([node.module] if node.module else []))
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target == package or target.startswith(package + "."):
                    resolved = resolve(target)
                    if resolved and resolved != name:
                        edges.add(resolved)
        graph[name] = edges
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_package_has_no_import_cycle():
    graph = import_graph(REPO / "lambda_det")
    assert len(graph) > 30 and "lambda_det.layers.lambda_layer" in graph
    assert find_cycle(graph) == []


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("from .sub.b import g\n\ndef f():\n    return g()\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def g():\n    from ..a import f  # hidden\n    return f\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.sub.b", "pkg.a"]
    (pkg / "sub" / "b.py").write_text("def g():\n    import pkg.errors\n")
    (pkg / "errors.py").write_text("")
    assert find_cycle(import_graph(pkg)) == []


def test_the_error_types_import_nothing_of_the_package():
    assert import_graph(REPO / "lambda_det")["lambda_det.errors"] == set()


def test_every_shipped_config_is_found_and_builds_its_config():
    from lambda_det import model_zoo
    from lambda_det.errors import ConfigError

    names = model_zoo.list_configs()
    on_disk = sorted(str(p.relative_to(REPO / "configs")) for pattern in ("*.yaml", "*.py") for p in (REPO / "configs").rglob(pattern))
    assert names == on_disk and len(names) >= 20
    for name in names:
        assert Path(model_zoo.get_config_file(name)).is_file()
        if name.endswith(".py"):  # a LazyConfig (tests/test_lazyconfig.py builds them)
            assert model_zoo.get_config(name).model.backbone.bottom_up
        elif not Path(name).name.startswith("Base-"):
            assert model_zoo.get_config(name).MODEL.BACKBONE.NAME
    with pytest.raises(ConfigError, match="did you mean"):
        model_zoo.get_config_file("Toy/mask_rcnn_LambdaR_26_FPN_tyo.yaml")
    with pytest.raises(ConfigError, match="no trained weights are published"):
        model_zoo.get("Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml", trained=True)
    # as Detectron2's model_zoo.get: in training mode, on CUDA where there is one
    for name in ("Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml", "Toy/mask_rcnn_LambdaR_26_FPN_toy_LSJ.py"):
        model = model_zoo.get(name)
        assert model.training and next(model.parameters()).device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    # Detectron2's get_config(config_path, trained=False), by keyword or in its place
    assert model_zoo.get_config("Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml", False).MODEL.BACKBONE.NAME
    for call in ({"trained": True}, {"opts": True}, {"opts": False, "trained": True}):
        with pytest.raises(ConfigError, match="no trained weights are published"):
            model_zoo.get_config("Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml", **call)
    # a path that leaves the shipped configs is none of them
    for outside in ("../../../setup.py", "/etc/hostname", "../__init__.py"):
        with pytest.raises(ConfigError, match="is not a config that ships with lambda_det"):
            model_zoo.get_config_file(outside)


def test_an_installed_wheel_works_without_the_checkout(tmp_path):
    """pip install of a built wheel (not editable), used from another folder: the configs ship inside
    the package, the main job's model builds, and the tools run."""
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "output", "datasets", "build", "*.egg-info",
                                                                "__pycache__", "docs", "tests"), symlinks=True)
    env = dict(os.environ, PIP_CONFIG_FILE="/dev/null", PIP_NO_INDEX="1")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, env=env)
    wheel = next((tmp_path / "dist").glob("lambda_det-*.whl"))
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True, env=env)
    shutil.rmtree(source)  # nothing may reach back into the tree the wheel was built from

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_env = dict(os.environ, PYTHONPATH=str(site))
    check = (
        "import lambda_det, pathlib; from lambda_det import model_zoo\n"
        f"assert pathlib.Path(lambda_det.__file__).is_relative_to({str(site)!r}), lambda_det.__file__\n"
        "names = model_zoo.list_configs(); assert len(names) >= 20\n"
        "assert 'new_baselines/mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py' in names, names\n"
        "lazy = model_zoo.get_config('new_baselines/mask_rcnn_LambdaR_152_FPN_400ep_LSJ.py')\n"
        "assert lazy.model.backbone.bottom_up.depth == 152, lazy.model.backbone.bottom_up\n"
        "model = model_zoo.get('Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml')\n"
        "print(len(names), sum(p.numel() for p in model.parameters()))\n"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=run_env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.split()[1]) > 1_000_000
    config = subprocess.run([sys.executable, "-c", "from lambda_det import model_zoo; "
                             "print(model_zoo.get_config_file('Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml'))"],
                            cwd=elsewhere, env=run_env, capture_output=True, text=True).stdout.strip()
    tool = subprocess.run([sys.executable, str(REPO / "tools" / "analyze_model.py"), "--config-file", config,
                           "--tasks", "parameter"], cwd=elsewhere, env=run_env, capture_output=True, text=True)
    assert tool.returncode == 0, tool.stderr[-3000:]
    assert "Parameters:" in tool.stdout
