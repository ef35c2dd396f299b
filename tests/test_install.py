"""The package installs as one ``activation_oracles`` tree, from a wheel and editable.

``hooks/``, ``training/`` and ``evals/`` are top-level folders in the repository
but must install as ``activation_oracles.hooks`` / ``.training`` / ``.evals``:
no bare ``hooks`` module may land in site-packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("hooks", "training", "evals")


# Where each subpackage resolves, and whether a bare ``hooks``/``training``/``evals`` exists.
# find_spec locates a submodule without executing it, so this never imports torch.
_WHERE = ("import importlib.util as u; "
          "[print(u.find_spec('activation_oracles.' + n).origin) for n in ('hooks', 'training', 'evals')]; "
          "print(all(u.find_spec(n) is None for n in ('hooks', 'training', 'evals')))")


def _run(cmd: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build a wheel from a copy of the sources (so the checkout gets no build/ or egg-info)."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("activation_oracles", *SUBPACKAGES):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    dist = root / "dist"
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                 "-w", str(dist), "."], cwd=src)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(dist.glob("activation_oracles-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_maps_subpackages_under_activation_oracles(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for sub in SUBPACKAGES:
        assert f"activation_oracles/{sub}/__init__.py" in names
    assert "activation_oracles/__init__.py" in names
    assert "activation_oracles/cli.py" in names
    top_levels = {n.split("/", 1)[0] for n in names}
    assert {t for t in top_levels if not t.endswith(".dist-info")} == {"activation_oracles"}, top_levels
    for sub in SUBPACKAGES:
        assert not any(n.startswith(f"{sub}/") for n in names), f"bare {sub}/ in the wheel"


def test_wheel_declares_the_ao_console_script(wheel: Path) -> None:
    zf = zipfile.ZipFile(wheel)
    (entry_points,) = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = zf.read(entry_points).decode()
    assert "[console_scripts]" in text
    assert "ao = activation_oracles.cli:main" in text


def test_wheel_alone_provides_every_subpackage(wheel: Path, tmp_path: Path) -> None:
    """Unpacked into an empty folder, the wheel alone provides every subpackage (deps come from the venv)."""
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    proc = _run([sys.executable, "-c", _WHERE], cwd=tmp_path, PYTHONPATH=str(target))
    assert proc.returncode == 0, proc.stderr
    *files, no_bare = proc.stdout.split()
    for sub, file in zip(SUBPACKAGES, files):
        assert Path(file) == target / "activation_oracles" / sub / "__init__.py"
    assert no_bare == "True"


def test_editable_install_maps_subpackages_to_repo_folders(tmp_path: Path) -> None:
    """In this (editable) venv, activation_oracles.hooks is the repo's hooks/ and no bare ``hooks`` exists."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _WHERE], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    *files, no_bare = proc.stdout.split()
    for sub, file in zip(SUBPACKAGES, files):
        assert Path(file).resolve() == (REPO / sub / "__init__.py").resolve()
    assert no_bare == "True"
