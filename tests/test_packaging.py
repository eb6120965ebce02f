"""Packaging: a license, ranges rather than pins, every import declared, and a wheel that installs
offline (``pip install --no-index --find-links``) into a fresh environment."""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import fedprostate

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
# import name -> distribution, where they differ and the package may not be installed here
IMPORT_NAMES = {"sklearn": "scikit-learn", "SimpleITK": "simpleitk", "mlflow": "mlflow-skinny",
                "yaml": "pyyaml", "tomli_w": "tomli-w"}  # fmt: skip


def _requirements(extra: str | None = None) -> list[Requirement]:
    items = PROJECT["dependencies"] if extra is None else PROJECT["optional-dependencies"][extra]
    return [Requirement(r) for r in items]


def _imported_top_level(folder: Path) -> set[str]:
    names = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"fedprostate", "__future__"}


def _distribution(module: str) -> str:
    found = md.packages_distributions().get(module)
    return canonicalize_name(found[0] if found else IMPORT_NAMES.get(module, module))


def test_every_imported_package_is_declared():
    declared = {canonicalize_name(r.name) for r in _requirements()}
    optional = {canonicalize_name(r.name) for e in PROJECT["optional-dependencies"]
                for r in _requirements(e)}  # fmt: skip
    missing = []
    for module in sorted(_imported_top_level(ROOT / "src" / "fedprostate")):
        dist = _distribution(module)
        # torch ships torch.utils.tensorboard, whose import needs the tensorboard extra
        if dist not in declared and dist not in optional:
            missing.append(f"{module} ({dist})")
    assert missing == []


def test_optional_integrations_are_extras_not_dependencies():
    extras = PROJECT["optional-dependencies"]
    assert {"tracking", "picai", "dicom", "docs", "test"} <= set(extras)
    names = {canonicalize_name(r.name) for r in _requirements()}
    for lib in ("tensorboard", "mlflow-skinny", "picai-eval", "picai-prep", "pdoc"):
        assert lib not in names


def test_ranges_not_pins_and_the_installed_versions_satisfy_them():
    unmet = []
    for req in _requirements():
        ops = {spec.operator for spec in req.specifier}
        assert "==" not in ops and "===" not in ops, f"{req} is a pin"
        assert ">=" in ops and "<" in ops, f"{req} needs a lower and an upper bound"
        installed = md.version(req.name)
        if not req.specifier.contains(installed, prereleases=True):
            unmet.append(f"{req} (installed {installed})")
    assert unmet == []


def test_license_file_matches_the_declared_license():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert PROJECT["license"] == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text


def test_one_version_everywhere():
    assert PROJECT["version"] == fedprostate.__version__


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


@pytest.mark.slow
def test_wheel_from_the_clone_installs_offline_into_a_fresh_environment(tmp_path):
    """The README's offline path, scaled down: build the project's wheel from a clean copy of the
    clone, then install it with ``--no-index --find-links`` (no package index is contacted)
    into a new virtual environment. The dependencies come from the environment this test runs
    in, standing in for the wheelhouse's other wheels (this machine has no copy of every
    dependency's wheel, and building them would take minutes and gigabytes: torch alone is
    several hundred MB). ``pip check`` then confirms the declared ranges accept them."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "src", clone / "src", ignore=shutil.ignore_patterns("__pycache__",
                    "*.egg-info"))  # fmt: skip
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, clone / name)
    wheelhouse = tmp_path / "wheelhouse"
    pip = [sys.executable, "-m", "pip"]
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheelhouse),
                    str(clone)], check=True, capture_output=True, env=env)  # fmt: skip
    (wheel,) = wheelhouse.glob("fedprostate-*.whl")
    assert (clone / "build").exists() and not (ROOT / "build").exists()

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = _venv_python(venv)
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          check=True, capture_output=True, text=True, encoding="utf-8", errors="replace").stdout.strip()  # fmt: skip
    # the dependencies already installed here, after the new environment's own site-packages
    (Path(site) / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # --ignore-installed: the stand-in environment holds a fedprostate (the editable clone);
    # it is left untouched and the wheel goes into the new environment
    subprocess.run([*pip, "--python", str(py), "install", "--no-index", "--no-deps", "-I",
                    "--find-links", str(wheelhouse), "fedprostate"],
                   check=True, capture_output=True, env=env)  # fmt: skip
    where = subprocess.run([str(py), "-c", "import fedprostate; print(fedprostate.__file__)"],
                           check=True, capture_output=True, text=True, encoding="utf-8", errors="replace", env=env).stdout  # fmt: skip
    assert where.startswith(str(venv)), where  # the installed wheel, not the clone
    version = subprocess.run([str(venv / "bin" / "fedprostate"), "--version"], check=True,
                             capture_output=True, text=True, encoding="utf-8", errors="replace", env=env).stdout  # fmt: skip
    assert version.strip() == f"fedprostate {fedprostate.__version__}"
    check = subprocess.run([*pip, "--python", str(py), "check"], capture_output=True, text=True, encoding="utf-8", errors="replace",
                           env=env)  # fmt: skip
    ours = [line for line in check.stdout.splitlines() if line.lower().startswith("fedprostate")]
    assert ours == [], ours
    files = subprocess.run([str(py), "-m", "zipfile", "-l", str(wheel)], capture_output=True,
                           text=True, encoding="utf-8", errors="replace", check=True).stdout  # fmt: skip
    assert "fedprostate/api.py" in files and "licenses/LICENSE" in files
