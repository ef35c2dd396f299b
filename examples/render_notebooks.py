"""Execute the example notebooks top to bottom and save them with their outputs (``make notebooks``).

The notebooks are committed with outputs so a reader sees the answers and plots on the
repository page; the tests execute a temporary copy of each again (``tests/test_notebooks.py``),
so a notebook that stops working still fails. Run this after changing a notebook or the shipped
oracle, and commit the result.

Each notebook runs in a temporary working directory, in a kernel that is *this* interpreter (a
private kernel spec: a user-wide ``python3`` spec may name another Python). Outputs that name the
temporary directory are rewritten to ``<workdir>``, and stderr streams (library warnings and
weight-loading bars, which name the installing machine's paths) are not saved, so no machine's
paths are committed; a reader who runs the notebook sees them as usual.

Usage: ``python examples/render_notebooks.py [NAME.ipynb ...]`` (default: every notebook here).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

EXAMPLES = Path(__file__).resolve().parent
NOTEBOOKS = ("quickstart.ipynb", "train_your_own.ipynb")
CELL_TIMEOUT_S = 600


def kernel_manager(spec_root: Path) -> AsyncKernelManager:
    """A manager whose ``python3`` kernel is ``sys.executable``, from a spec under ``spec_root`` only."""
    spec_dir = spec_root / "kernels" / "python3"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3", "language": "python",
    }))
    specs = KernelSpecManager(kernel_dirs=[str(spec_root / "kernels")], ensure_native_kernel=False)
    return AsyncKernelManager(kernel_name="python3", kernel_spec_manager=specs)


def kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    # The inline backend turns a figure into an image/png output; an inherited MPLBACKEND=Agg would drop it.
    env.pop("MPLBACKEND", None)
    # One torch thread: on a busy 2-core machine a second OpenMP thread spin-waits (several times slower).
    env["OMP_NUM_THREADS"] = os.environ.get("AO_TEST_THREADS", "1")
    env.setdefault("AO_PROGRESS", "never")  # a bar's carriage returns would fill the saved outputs
    return env


def execute(nb: nbformat.NotebookNode, workdir: Path, spec_root: Path) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` in place, with ``workdir`` as the working directory; a cell error raises."""
    client = NotebookClient(nb, km=kernel_manager(spec_root), kernel_name="python3", timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(cleanup_kc=True, env=kernel_env())
    return nb


def _scrub(node: object, old: str, new: str) -> object:
    if isinstance(node, str):
        return node.replace(old, new)
    if isinstance(node, list):
        return [_scrub(x, old, new) for x in node]
    if isinstance(node, dict):
        return type(node)({k: _scrub(v, old, new) for k, v in node.items()})
    return node


def render(name: str) -> Path:
    """Execute ``examples/NAME`` and write it back with its outputs; return its path."""
    path = EXAMPLES / name
    nb = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        execute(nb, work, Path(tmp))
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs = [o for o in cell.outputs if not (o.get("output_type") == "stream"
                                                                and o.get("name") == "stderr")]
                cell.outputs = _scrub(cell.outputs, str(Path(tmp).resolve()), "<workdir>")
                cell.outputs = _scrub(cell.outputs, tmp, "<workdir>")
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    nbformat.write(nb, path)
    return path


def main(argv: list[str]) -> int:
    names = argv or list(NOTEBOOKS)
    unknown = [n for n in names if not (EXAMPLES / n).is_file()]
    if unknown:
        print(f"error: no notebook {unknown[0]!r} in examples/; expected one of {', '.join(NOTEBOOKS)}.",
              file=sys.stderr)
        return 2
    for name in names:
        print(f"rendering {name} ...", flush=True)
        render(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
