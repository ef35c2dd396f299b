"""Time what a new user runs first, the way the README says it (each in a fresh process, wall clock).

(a) the first load of the embedded model: GGUF conversion into an empty ``$AO_CACHE``;
(b) a later load (the cached folder);
(c) ``ao demo`` (model, shipped oracle, four contrast pairs, one open question);
(d) ``ao capture`` of the README's example;
(e) ``ao train --preset tiny`` (the CI smoke run).

Run on a quiet machine: ``.venv/bin/python benchmarks/first_hour.py`` (it uses a temporary cache
for (a) and the user's own cache for the rest, as a second session would).
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import cpu_name

AO = [sys.executable, "-m", "activation_oracles"]
LOAD = [sys.executable, "-c", "import activation_oracles as ao; ao.load_model('smollm2-135m')"]


def wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> int:
    env = dict(os.environ, AO_PROGRESS="never")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("first load (GGUF conversion, empty cache)", wall(LOAD, dict(env, AO_CACHE=tmp))))
        rows.append(("later load (cached)", wall(LOAD, dict(env, AO_CACHE=tmp))))
    wall(LOAD, env)  # the user's own cache, converted once if it is not yet
    rows.append(("ao demo", wall(AO + ["demo"], env)))
    rows.append(("ao capture (README example)", wall(AO + ["capture", "--prompt", "Tell me about owls.", "--layers", "7",
                                                             "--layers", "15", "--positions", "last:4"], env)))
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("ao train --preset tiny", wall(AO + ["train", "--preset", "tiny", "--out", str(Path(tmp) / "t")],
                                                    env)))
    print(f"{datetime.date.today()} | {cpu_name()} | {torch.get_num_threads()} threads | torch {torch.__version__}")
    print("| step | wall s |\n|---|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
