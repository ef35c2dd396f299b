"""The example notebooks run top to bottom without an error and produce what they promise.

Each notebook is executed from a temporary copy (its working directory a temporary folder, so
nothing is written into the checkout) by a Jupyter kernel that runs *this* interpreter: the
notebooks must work with the project installed in ``.venv``, whatever kernel specs the machine has.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CELL_TIMEOUT_S = 300
_PROBE = "import sys; print('kernel executable:', sys.executable)"


def _kernel_manager(tmp_path: Path) -> AsyncKernelManager:
    """A manager whose ``python3`` kernel is ``sys.executable``, from a spec only this test sees.

    The stock ``python3`` spec says ``python``; a user-wide spec (searched before the venv's) may
    name another interpreter, and ``make setup`` installs no spec at all. A private spec avoids
    all three, with the kernel name the notebooks declare.
    """
    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (test)", "language": "python",
    }))
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    # The inline backend (ipykernel's default) is what turns a figure into an image/png output;
    # an inherited MPLBACKEND=Agg would silently drop the plots.
    env.pop("MPLBACKEND", None)
    # One torch thread, as in conftest: on a busy 2-core machine a second OpenMP thread spin-waits
    # and makes the embedded model several times slower (measured: 90 s instead of 20 s).
    env["OMP_NUM_THREADS"] = os.environ.get("AO_TEST_THREADS", "1")
    return env


def run_notebook(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    """Execute ``examples/NAME`` from a temporary copy; any cell error fails the test."""
    work = tmp_path / "work"
    work.mkdir()
    copy = work / name
    shutil.copyfile(EXAMPLES / name, copy)
    nb = nbformat.read(copy, as_version=4)
    nb.cells.append(new_code_cell(_PROBE))  # which interpreter ran the cells (checked below)
    km = _kernel_manager(tmp_path)
    client = NotebookClient(nb, km=km, kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(work)}})
    # cleanup_kc: nbclient leaves a kernel it did not create running; this one is ours, so have it
    # shut down when the notebook ends, also after a failing cell.
    client.execute(cleanup_kc=True, env=_kernel_env())
    probe = _stream_text(nb.cells[-1])
    assert f"kernel executable: {sys.executable}" in probe, probe
    return nb


def _stream_text(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                   and o.get("name") == "stdout")


def _all_stdout(nb: nbformat.NotebookNode) -> str:
    return "".join(_stream_text(c) for c in nb.cells if c.cell_type == "code")


def _images(nb: nbformat.NotebookNode) -> list[str]:
    return [o["data"]["image/png"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") in ("display_data", "execute_result") and "image/png" in o.get("data", {})]


@pytest.mark.parametrize("name", ["quickstart.ipynb", "train_your_own.ipynb"])
def test_notebook_is_saved_clean(name: str) -> None:
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, "save the notebook without outputs"
    # No machine-specific paths in what readers copy.
    text = "\n".join(c.source for c in nb.cells)
    assert not re.search(r"(/work/|/home/|/root/|/Users/|[A-Z]:\\)", text)


@pytest.mark.slow
def test_quickstart_runs(tmp_path: Path) -> None:
    nb = run_notebook("quickstart.ipynb", tmp_path)
    out = _all_stdout(nb)
    # The three rows of the controls table, each with a probability.
    for name in ("trained oracle", "untrained", "coeff=0 control"):
        m = re.search(rf"{re.escape(name)}\s+P\(Yes\) = ([0-9.]+)", out)
        assert m and 0.0 <= float(m.group(1)) <= 1.0, out
    assert len(_images(nb)) == 1, "the oracle-lens heat strip should be one PNG output"


def test_train_your_own_runs(tmp_path: Path) -> None:
    nb = run_notebook("train_your_own.ipynb", tmp_path)
    out = _all_stdout(nb)
    first = float(re.search(r"first training loss: (\S+)", out).group(1))
    final = float(re.search(r"final training loss: (\S+)", out).group(1))
    assert math.isfinite(final) and final < first, (first, final)
    assert "60 steps, 480 examples" in out
    assert "P(Yes)" in out  # the trained run loaded as an oracle and answered
    assert len(_images(nb)) == 1, "the loss curve should be one PNG output"
