"""`python -m build` makes a wheel that installs on its own, carries the shipped tiny backbones, and runs the CLI.

The wheel is built from a copy of the sources (so the work tree gets no build/ or egg-info) without build
isolation (no index is reached: setuptools comes from this environment), then installed with ``--no-deps`` into a
fresh virtual environment that sees this environment's third-party packages but not its editable minillava.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import minillava

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    if importlib.util.find_spec("build") is None:
        pytest.skip("the 'build' package is not installed (pip install build)")
    src = tmp_path_factory.mktemp("src")
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "minillava", src / "minillava", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", out, src], cwd=src)
    wheels = list(out.glob("minillava-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_carries_the_shipped_backbones(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {str(p.relative_to(ROOT)) for p in (ROOT / "minillava" / "assets" / "tiny").rglob("*") if p.is_file()}
    assert shipped and shipped <= names, sorted(shipped - names)
    assert "minillava/assets/tiny/lm/model.safetensors" in names
    assert "minillava/cli.py" in names and not any(n.startswith(("tests/", "notebooks/")) for n in names)
    print(f"wheel {wheel.name}: {wheel.stat().st_size / 1e6:.1f} MB")


def test_wheel_installs_and_runs_the_cli(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", venv])
    python = venv / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    # this environment's packages (torch, transformers, ...) as a plain path: its .pth files (the editable
    # minillava among them) are not run, so only the wheel can provide minillava
    (Path(purelib) / "minillava_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", wheel])
    where = _run([python, "-c", "import minillava; print(minillava.__file__)"], cwd=tmp_path).stdout.strip()
    assert Path(where).is_relative_to(venv), where

    minillava_cli = venv / "bin" / "minillava"
    version = _run([minillava_cli, "--version"], cwd=tmp_path).stdout.strip()
    assert version == f"minillava {minillava.__version__}"
    helptext = _run([minillava_cli, "--help"], cwd=tmp_path).stdout
    for command in ("data", "train", "quickstart", "chat", "eval", "figures", "export", "demo"):
        assert command in helptext
    assert "example:" in _run([minillava_cli, "data", "llava-instruct", "--help"], cwd=tmp_path).stdout
    # the package finds its shipped stand-in backbones inside the installed wheel
    assets = _run([python, "-c", "from minillava.model.backbones import TINY_DIR; print(TINY_DIR)"],
                  cwd=tmp_path).stdout.strip()
    assert Path(assets).is_relative_to(venv) and (Path(assets) / "lm" / "model.safetensors").is_file()
