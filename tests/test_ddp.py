"""DDP: two CPU processes (gloo, launched by torchrun) compute the same loss and gradients as one process.

Each process trains on its own share of every global batch; the loss is normalised by
the answer tokens of the whole global batch, so the all-reduced gradient equals the
one-process gradient for the same batch. Dropout is off (its random draws differ per
process) and the run is fp32, so the only differences are summation order.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from activation_oracles.training.config import TrainConfig, apply_overrides
from activation_oracles.training.presets import preset

OVERRIDES = ["lora.dropout=0", "optim.batch_size=8", "optim.bf16=false", "eval.n_examples=0",
             "output.progress=false", "optim.lr=1e-2"]

WORKER = textwrap.dedent('''
    import json, sys
    import torch
    from safetensors.torch import save_file
    from activation_oracles.training.config import TrainConfig
    from activation_oracles.training.trainer import Trainer

    cfg = TrainConfig.load(sys.argv[1])
    trainer = Trainer(cfg, out_dir=sys.argv[2])
    batches = iter(trainer.stream)
    losses, grads = [], {}
    for step in range(2):  # two steps: the second starts from weights the first step changed
        stats = trainer.compute_step(next(batches))
        losses.append(stats.loss)
        if step == 1:
            grads = {n: p.grad.detach().clone() for n, p in trainer.peft.named_parameters() if p.requires_grad}
        trainer.optimizer_step()
    if trainer.dist.rank == 0:
        save_file(grads, sys.argv[3] + ".safetensors")
        json.dump({"losses": losses, "world_size": trainer.dist.world_size}, open(sys.argv[3] + ".json", "w"))
    import torch.distributed as dist
    dist.destroy_process_group()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _single_process(cfg: TrainConfig, out: Path) -> tuple[list[float], dict[str, torch.Tensor]]:
    from activation_oracles.training.trainer import Trainer

    threads = torch.get_num_threads()
    try:
        trainer = Trainer(cfg, out_dir=out)
        batches = iter(trainer.stream)
        losses, grads = [], {}
        for step in range(2):
            losses.append(trainer.compute_step(next(batches)).loss)
            if step == 1:
                grads = {n: p.grad.detach().clone() for n, p in trainer.peft.named_parameters() if p.requires_grad}
            trainer.optimizer_step()
        return losses, grads
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("weighting", ["token", "example"])
def test_two_gloo_processes_match_one_process(tmp_path, weighting):
    cfg = apply_overrides(preset("tiny"), [*OVERRIDES, f"optim.loss_weighting={weighting}"])
    cfg_path = tmp_path / "ddp.toml"
    cfg.save(cfg_path)
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    result = tmp_path / "ddp_result"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(worker), str(cfg_path), str(tmp_path / "ddp_out"), str(result)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    # Meanwhile: one process, the same global batches, and (separately) two accumulation steps.
    losses_1, grads_1 = _single_process(cfg, tmp_path / "single")
    losses_acc, grads_acc = _single_process(apply_overrides(cfg, ["optim.grad_accum=2"]), tmp_path / "accum")

    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    ddp = json.loads((tmp_path / "ddp_result.json").read_text())
    grads_2 = load_file(str(tmp_path / "ddp_result.safetensors"))
    assert ddp["world_size"] == 2
    assert grads_1.keys() == grads_2.keys() == grads_acc.keys() and grads_1
    for name in grads_1:
        # Agreement up to the order of the gradient sums: relative to the tensor's own scale
        # (lm_head's LoRA B gradient spans 49,152 rows; its largest entries reach ~1e-1).
        for other in (grads_2[name], grads_acc[name]):
            scale = grads_1[name].abs().max().item()
            diff = (grads_1[name] - other).abs().max().item()
            assert diff <= 1e-5 + 1e-4 * scale, (name, diff, scale)
    assert max(abs(a - b) for a, b in zip(losses_1, ddp["losses"])) <= 1e-5
    assert max(abs(a - b) for a, b in zip(losses_1, losses_acc)) <= 1e-5
    assert any(float(g.abs().max()) > 1e-4 for g in grads_1.values())  # the comparison is not vacuous
