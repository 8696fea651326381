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
    chosen_nll,
    dpo_loss,
    get_loss,
    ipo_loss,
    mcpo_loss,
    mpo_loss,
    simpo_loss,
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
    assert LOSSES == {"dpo": dpo_loss, "ipo": ipo_loss, "simpo": simpo_loss, "mcpo": mcpo_loss, "mpo": mpo_loss}
    for name, fn in LOSSES.items():
        assert get_loss(name) is fn


@pytest.mark.parametrize("name", ["nope", "", "DPO", "rpo"])
def test_get_loss_unknown_lists_names(name):
    with pytest.raises(ValueError) as info:
        get_loss(name)
    message = str(info.value)
    for known in LOSSES:
        assert known in message, (known, message)
    assert repr(name) in message


# The paper each public loss must cite: the arXiv id in its docstring.
PAPERS = {
    dpo_loss: "2305.18290",  # Rafailov et al. 2023, DPO
    ipo_loss: "2310.12036",  # Azar et al. 2023, IPO
    simpo_loss: "2405.14734",  # Meng, Xia, Chen 2024, SimPO
    mcpo_loss: "2502.04567",  # Chen et al. 2025, MC-PO
    mpo_loss: "2312.16430",  # Jiang, Huang, Wei 2023, MPO
    chosen_nll: "2404.19733",  # Pang et al. 2024, iterative RPO
}


def test_every_registered_loss_has_a_paper_entry():
    assert set(LOSSES.values()) <= set(PAPERS)


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
