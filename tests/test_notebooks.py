"""The example notebooks run top to bottom without an error and produce what they promise.

They are committed with their outputs (``make notebooks``), so a reader sees results on the
repository page; each is executed again here. Each notebook is executed from a temporary copy (its working directory a temporary folder, so
nothing is written into the checkout) by a Jupyter kernel that runs *this* interpreter: the
notebooks must work with the project installed in ``.venv``, whatever kernel specs the machine has.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
from render_notebooks import NOTEBOOKS, execute  # noqa: E402  (the script that saves the outputs)

_PROBE = "import sys; print('kernel executable:', sys.executable)"
_MACHINE_PATH = re.compile(r"(/work/|/home/|/root/|/tmp/|/Users/|[A-Z]:\\)")


def run_notebook(name: str, tmp_path: Path) -> nbformat.NotebookNode:
    """Execute ``examples/NAME`` from a temporary copy; any cell error fails the test."""
    work = tmp_path / "work"
    work.mkdir()
    copy = work / name
    shutil.copyfile(EXAMPLES / name, copy)
    nb = nbformat.read(copy, as_version=4)
    nb.cells.append(new_code_cell(_PROBE))  # which interpreter ran the cells (checked below)
    execute(nb, work, tmp_path)
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


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_saved_with_its_outputs(name: str) -> None:
    """Committed as ``make notebooks`` writes it: run top to bottom, outputs shown, no machine paths."""
    nb = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4 and nb.metadata.kernelspec.name == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run `make notebooks` and commit"
    assert all(c.outputs for c in code if c.source.strip() and not c.source.strip().endswith(";")
               and "cleanup()" not in c.source), "every cell that shows something has its output saved"
    assert not any(o.get("output_type") == "error" for c in code for o in c.outputs)
    assert _images(nb), "the plot a reader sees on the repository page"
    text = "\n".join(c.source for c in nb.cells) + json.dumps([c.outputs for c in code])
    assert not _MACHINE_PATH.search(text), _MACHINE_PATH.search(text)


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
