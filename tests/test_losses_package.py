"""The losses package as a whole: torch-only imports, the registry, docstrings, packaging."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

try:  # tomllib is 3.11+; the project supports 3.10, where tomli is the same parser.
    import tomllib
except ModuleNotFoundError:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

import prefpool.losses as losses
from prefpool.losses import (
    LOSSES,
    METHODS,
    apo_down_loss,
    apo_zero_loss,
    bco_pair_loss,
    chosen_nll,
    cpo_loss,
    dpo_loss,
    exo_pair_loss,
    get_loss,
    hinge_loss,
    infonca_loss,
    ipo_loss,
    kto_pair_loss,
    mcpo_loss,
    mpo_loss,
    nca_pair_loss,
    orpo_loss,
    robust_dpo_loss,
    simpo_loss,
    sppo_hard_loss,
)

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("transformers", "vllm", "datasets", "pyarrow")


def test_import_loads_no_heavy_dependency():
    """A fresh interpreter that imports prefpool.losses (and uses it) must not load
    transformers, vllm, datasets or pyarrow, not even as a submodule."""
    code = (
        "import json, sys, torch\n"
        "import prefpool.losses as L\n"
        "x = torch.zeros(2)\n"
        "L.dpo_loss(x, x, x, x)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "prefpool.losses" in loaded  # the check ran against the real import
    heavy = sorted(m for m in loaded if m.split(".")[0] in HEAVY)
    assert heavy == [], heavy


def test_registry_maps_names_to_functions():
    expected = {"dpo": dpo_loss, "ipo": ipo_loss, "simpo": simpo_loss, "mcpo": mcpo_loss, "mpo": mpo_loss}
    assert {name: LOSSES[name] for name in expected} == expected
    assert LOSSES == {name: method.function for name, method in METHODS.items()}
    for name, fn in LOSSES.items():
        assert get_loss(name) is fn


def test_registry_collects_every_module_methods():
    """Every ``METHODS`` entry of every module of the package is registered, under its own name."""
    import importlib
    import pkgutil

    declared = {}
    for info in pkgutil.iter_modules(losses.__path__):
        if info.name == "registry":  # the collected dict itself
            continue
        module = importlib.import_module(f"prefpool.losses.{info.name}")
        declared.update({m.name: m for m in getattr(module, "METHODS", ())})
    assert declared == METHODS


@pytest.mark.parametrize("name", ["nope", "", "DPO", "rpo"])
def test_get_loss_unknown_lists_names(name):
    with pytest.raises(ValueError) as info:
        get_loss(name)
    message = str(info.value)
    for known in LOSSES:
        assert known in message, (known, message)
    assert repr(name) in message


# The paper each of these public losses must cite: the arXiv id in its docstring (every registered
# method's loss cites one: test_every_method_docstring_names_a_paper_and_shapes).
PAPERS = {
    dpo_loss: "2305.18290",  # Rafailov et al. 2023, DPO
    ipo_loss: "2310.12036",  # Azar et al. 2023, IPO
    simpo_loss: "2405.14734",  # Meng, Xia, Chen 2024, SimPO
    mcpo_loss: "2502.04567",  # Chen et al. 2025, MC-PO
    mpo_loss: "2312.16430",  # Jiang, Huang, Wei 2023, MPO
    exo_pair_loss: "2402.00856",  # Ji et al. 2024, EXO
    cpo_loss: "2401.08417",  # Xu et al. 2024, CPO
    bco_pair_loss: "2404.04656",  # Jung et al. 2024, BCO
    kto_pair_loss: "2402.01306",  # Ethayarajh et al. 2024, KTO
    apo_zero_loss: "2408.06266",  # D'Oosterlinck et al. 2024, APO
    apo_down_loss: "2408.06266",
    sppo_hard_loss: "2405.00675",  # Wu et al. 2024, SPPO
    nca_pair_loss: "2402.05369",  # Chen et al. 2024, NCA
    infonca_loss: "2402.05369",  # Chen et al. 2024, InfoNCA
    hinge_loss: "2305.10425",  # Zhao et al. 2023, SLiC
    robust_dpo_loss: "2403.00409",  # Chowdhury et al. 2024, rDPO
    orpo_loss: "2403.07691",  # Hong, Lee, Thorne 2024, ORPO
    chosen_nll: "2404.19733",  # Pang et al. 2024, iterative RPO
}


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_docstring_names_a_paper_and_shapes(name):
    """A method's loss cites its paper (an arXiv id) and gives the shapes of its tensors."""
    doc = inspect.getdoc(METHODS[name].function) or ""
    assert re.search(r"arXiv[: ]\s*\d{4}\.\d{4,5}", doc), name
    assert "(B,)" in doc, name


@pytest.mark.parametrize("fn", list(PAPERS), ids=lambda f: f.__name__)
def test_docstring_names_paper_and_shapes(fn):
    doc = inspect.getdoc(fn) or ""
    ids = re.findall(r"arXiv[: ]\s*(\d{4}\.\d{4,5})", doc)
    assert PAPERS[fn] in ids, (fn.__name__, ids)
    assert "(B,)" in doc, fn.__name__


def test_public_names_resolve():
    for name in losses.__all__:
        assert hasattr(losses, name), name


def _setuptools_config():
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["tool"]["setuptools"]


def test_pyproject_packages_match_package_folders():
    """Every folder holding an __init__.py under the mapped roots (prefpool/, losses/,
    pipeline/, train/) must map, via [tool.setuptools.package-dir], to a listed package;
    every listed package must map to an existing folder."""
    cfg = _setuptools_config()
    listed = set(cfg["packages"])
    package_dir = cfg["package-dir"]
    assert {"prefpool", "prefpool.losses", "prefpool.pipeline", "prefpool.train"} <= listed
    assert set(package_dir) >= {"prefpool", "prefpool.losses", "prefpool.pipeline", "prefpool.train"}

    found = {}
    for package, folder in package_dir.items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
                continue
            name = ".".join((package, *rel.parts))
            found[name] = init.parent.relative_to(ROOT).as_posix()
    missing = {name: folder for name, folder in found.items() if name not in listed}
    assert missing == {}, f"package folders not listed in [tool.setuptools] packages: {missing}"

    for name in listed:
        # A dotted package not itself in package-dir lives under its parent's folder.
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            head = ".".join(parts[:i])
            if head in package_dir:
                folder = ROOT / package_dir[head] / Path(*parts[i:])
                break
        else:
            folder = ROOT / Path(*parts)
        assert folder.is_dir(), f"{name} -> {folder} does not exist"


def test_losses_folder_is_mapped():
    """The checked-out losses/ folder is what `prefpool.losses` imports (editable install)."""
    folder = ROOT / _setuptools_config()["package-dir"]["prefpool.losses"]
    assert Path(losses.__file__).resolve().parent == folder.resolve()
