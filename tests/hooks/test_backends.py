"""The nnsight and TransformerLens backends against the torch backend: same user code, same numbers,
nothing left behind on the caller's model."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from activation_oracles.errors import BackendError, PositionError
from activation_oracles.hooks import MODES, capture_residuals, inject_residuals
from activation_oracles.tiny import tiny_model

from conftest import hook_snapshot

ALT = ["nnsight", "transformer_lens"]
ATOL = 1e-5
ROWS = [[5, 17, 42, 9, 99, 23, 64, 8], [3, 77, 12, 40, 6], [11, 4, 90]]  # left-padded into one batch


def _left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


IDS, MASK = _left_pad(ROWS)
REAL = MASK.bool()  # padding positions hold kernel-specific values (TL's bridge computes attention eagerly)


def _vectors(batch: int, k: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, k, d, generator=torch.Generator().manual_seed(seed))


def _close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None, atol: float = ATOL) -> None:
    if mask is not None:
        a, b = a[mask], b[mask]
    assert a.shape == b.shape
    diff = (a - b).abs().max().item()
    assert diff <= atol, diff


def _rel_close(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, rtol: float = 3e-5) -> None:
    """Per position, ||a - b|| <= rtol * ||b||: agreement up to float reordering at any scale.

    Eager attention (TransformerLens) against SDPA over 30 blocks differs by ~1.02e-5 relative on an
    AVX2-only CPU (below 1e-5 where AVX-512 kernels are used); a wrong hook site differs by ~1e-1.
    """
    a, b = a[mask], b[mask]
    worst = ((a - b).norm(dim=-1) / b.norm(dim=-1)).max().item()
    assert worst <= rtol, worst


def _slots(model) -> dict[str, tuple]:
    """Each module's instance-level forward/nnsight slots: what routing and nnsight write to."""
    return {name: tuple(sorted(k for k in ("forward", "__nnsight__") if k in m.__dict__))
            for name, m in model.hf.named_modules()}


@pytest.fixture(scope="module")
def model():
    """One 4-block random Llama (fp32) for the module, so the TL bridge is built once."""
    return tiny_model(n_layers=4, d_model=64, tokenizer=None)


def _capture(model, backend, layers, ids=IDS, mask=MASK, **kw):
    """The cache, and the logits when the pass ran to the end (``stop_early=False``)."""
    out = None
    with torch.no_grad(), capture_residuals(model, layers, backend=backend, **kw) as cache:
        out = model.hf(input_ids=ids, attention_mask=mask)
    return dict(cache), None if out is None else out.logits


def _inject_logits(model, backend, mode, positions, vectors, ids=IDS, mask=MASK, layer=1):
    with torch.no_grad(), inject_residuals(model, layer, positions, vectors, mode=mode, backend=backend):
        return model.hf(input_ids=ids, attention_mask=mask).logits


# -- parity -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ALT)
def test_capture_parity_left_padded(model, backend):
    ref, ref_logits = _capture(model, "torch", [0, 2, -1], stop_early=False)
    got, logits = _capture(model, backend, [0, 2, -1], stop_early=False)
    assert sorted(got) == [-1, 0, 2]
    for layer in ref:
        assert got[layer].shape == (3, IDS.shape[1], 64)
        _close(got[layer], ref[layer], REAL)
    _close(logits, ref_logits, REAL)
    if backend == "nnsight":  # the same model runs: padding positions agree too
        assert all(torch.equal(got[k], ref[k]) for k in ref)


@pytest.mark.parametrize("backend", ALT)
@pytest.mark.parametrize("positions", [[[0, -1], [1, 2], [0, 2]], [-1], [0, -2, 2]])
def test_capture_parity_with_positions(model, backend, positions):
    ref, _ = _capture(model, "torch", [1, 3], positions=positions)
    got, _ = _capture(model, backend, [1, 3], positions=positions)
    for layer in (1, 3):
        assert got[layer].shape == ref[layer].shape
        _close(got[layer], ref[layer])


@pytest.mark.parametrize("backend", ALT)
@pytest.mark.parametrize("mode", MODES)
def test_injection_parity(model, backend, mode):
    positions, vectors = [[0, -1], [1, 2], [0, 2]], _vectors(3, 2, 64)
    plain = _capture(model, "torch", [0], stop_early=False)[1]
    ref = _inject_logits(model, "torch", mode, positions, vectors)
    got = _inject_logits(model, backend, mode, positions, vectors)
    assert (ref - plain)[REAL].abs().max() > 1e-3  # the injection did something
    _close(got, ref, REAL)


@pytest.mark.parametrize("backend", ALT)
def test_stop_early_parity_and_skips_later_blocks(model, backend):
    ref, _ = _capture(model, "torch", [0, 1], stop_early=False)
    if backend == "transformer_lens":  # the bridge's copy runs in place of the caller's blocks
        from activation_oracles.hooks import tl_backend

        with capture_residuals(model, 0, backend=backend):
            pass
        last = tl_backend._BRIDGES[model.hf].backbone.get_submodule(model.layers_path.split(".")[-1])[2]
    else:
        last = model.layers[2]
    calls = []
    handle = last.register_forward_pre_hook(lambda *a: calls.append(1))
    ran_on = False
    try:
        with torch.no_grad(), capture_residuals(model, [0, 1], stop_early=True, backend=backend) as cache:
            model.hf(input_ids=IDS, attention_mask=MASK)
            ran_on = True
    finally:
        handle.remove()
    assert not ran_on and not calls
    for layer in (0, 1):
        _close(cache[layer], ref[layer], REAL)


@pytest.mark.parametrize("backend", ALT)
def test_generate_injects_prefill_only(model, backend):
    ids = torch.tensor([ROWS[0]])
    vectors = _vectors(1, 2, 64, seed=3)

    def run(name):
        with torch.no_grad(), inject_residuals(model, 1, [[1, 2]], vectors, coeff=4.0, backend=name):
            out = model.hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                    pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        return out.sequences, torch.stack(out.logits)

    # an injection reaching a decode step would raise (position 2 of a 1-token pass); a KV cache the
    # backend failed to extend would change every step after the first
    (ref_ids, ref_logits), (got_ids, got_logits) = run("torch"), run(backend)
    assert torch.equal(got_ids, ref_ids)
    _close(got_logits, ref_logits)


@pytest.mark.parametrize("backend", ALT)
def test_nested_capture_inside_injection(model, backend):
    positions, vectors = [[0], [1], [2]], _vectors(3, 1, 64, seed=1)

    def run(name):
        with torch.no_grad(), inject_residuals(model, 1, positions, vectors, mode="add", backend=name):
            with capture_residuals(model, [0, 2], stop_early=False, backend=name) as cache:
                logits = model.hf(input_ids=IDS, attention_mask=MASK).logits
        return dict(cache), logits

    (ref, ref_logits), (got, logits) = run("torch"), run(backend)
    for layer in (0, 2):
        _close(got[layer], ref[layer], REAL)
    _close(logits, ref_logits, REAL)


@pytest.mark.parametrize("backend", ALT)
def test_peft_model_gradients_and_disabled_adapter(backend):
    peft = pytest.importorskip("peft")
    from activation_oracles.models import as_model

    base = tiny_model(n_layers=3, d_model=32, tokenizer=None, seed=4)
    lora = peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = as_model(peft.get_peft_model(base.hf, lora))
    vectors = _vectors(3, 1, 32, seed=2)

    def run(name):
        model.hf.zero_grad()
        with capture_residuals(model, [0, 2], stop_early=False, backend=name) as cache:
            with inject_residuals(model, 1, [[0], [1], [2]], vectors, backend=name):
                logits = model.hf(input_ids=IDS, attention_mask=MASK).logits
        (logits[REAL] ** 2).mean().backward()
        grads = {n: p.grad.clone() for n, p in model.hf.named_parameters() if p.grad is not None}
        with torch.no_grad(), model.hf.disable_adapter(), capture_residuals(model, 2, backend=name) as plain:
            model.hf(input_ids=IDS, attention_mask=MASK)
        return cache, logits.detach(), grads, plain[2]

    (ref, ref_logits, ref_grads, ref_plain), (got, logits, grads, plain) = run("torch"), run(backend)
    for layer in (0, 2):
        _close(got[layer], ref[layer], REAL)
    _close(logits, ref_logits, REAL)
    assert grads.keys() == ref_grads.keys() and len(grads) == 18  # LoRA A/B of 3 modules x 3 blocks
    for name, grad in ref_grads.items():
        _close(grads[name], grad, atol=1e-6)
    _close(plain, ref_plain, REAL)  # the adapter switched off is seen as off


@pytest.mark.parametrize("backend", ALT)
def test_output_hidden_states_inside_a_block(model, backend):
    with torch.no_grad():
        ref = model.hf(input_ids=IDS, attention_mask=MASK, output_hidden_states=True).hidden_states
        with capture_residuals(model, 1, stop_early=False, backend=backend) as cache:
            got = model.hf(input_ids=IDS, attention_mask=MASK, output_hidden_states=True).hidden_states
    assert len(got) == len(ref) == model.n_layers + 1
    for a, b in zip(got, ref):
        _close(a, b, REAL)
    _close(cache[1], ref[2], REAL)


# -- the caller's model is left exactly as it was ------------------------------------------------------

def test_transformer_lens_never_mutates_the_callers_model():
    model = tiny_model(n_layers=2, d_model=32, tokenizer=None, seed=1)
    state = {k: v.clone() for k, v in model.hf.state_dict().items()}
    tree = [(name, type(m), id(m)) for name, m in model.hf.named_modules()]
    params = [(name, id(p), p.requires_grad, p.dtype) for name, p in model.hf.named_parameters()]
    config = model.hf.config.to_dict()
    with capture_residuals(model, [0, 1], stop_early=False, backend="transformer_lens") as cache:
        model.hf(input_ids=IDS, attention_mask=MASK)
    with inject_residuals(model, 0, [[0], [1], [2]], _vectors(3, 1, 32), backend="transformer_lens"):
        model.hf(input_ids=IDS, attention_mask=MASK)
    assert sorted(cache) == [0, 1]
    assert state.keys() == model.hf.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.hf.state_dict().items())
    assert tree == [(name, type(m), id(m)) for name, m in model.hf.named_modules()]
    assert params == [(name, id(p), p.requires_grad, p.dtype) for name, p in model.hf.named_parameters()]
    assert config == model.hf.config.to_dict()
    assert all(slots == () for slots in _slots(model).values())


def test_transformer_lens_bridge_follows_weight_changes():
    from activation_oracles.hooks import tl_backend

    model = tiny_model(n_layers=2, d_model=32, tokenizer=None, seed=2)
    _capture(model, "transformer_lens", [1])
    first = tl_backend._BRIDGES[model.hf]
    _capture(model, "transformer_lens", [1])
    assert tl_backend._BRIDGES[model.hf] is first  # unchanged model: the bridge is reused
    with torch.no_grad():
        model.layers[0].mlp.down_proj.weight.mul_(3.0)
    got, _ = _capture(model, "transformer_lens", [1])
    ref, _ = _capture(model, "torch", [1])
    assert tl_backend._BRIDGES[model.hf] is not first  # rebuilt after an in-place update
    _close(got[1], ref[1], REAL)


class _Boom(Exception):
    pass


@pytest.mark.parametrize("backend", ALT)
@pytest.mark.parametrize("how", ["normal", "exception", "interrupt", "bad_position"])
def test_nothing_left_behind(model, backend, how):
    from activation_oracles.hooks import nnsight_backend, tl_backend

    hooks, slots = hook_snapshot(model), _slots(model)
    expected = {"normal": None, "exception": _Boom, "interrupt": KeyboardInterrupt, "bad_position": PositionError}[how]

    def body():
        with capture_residuals(model, [0, 3], stop_early=False, backend=backend):
            positions = [[0], [1], [7 if how == "bad_position" else 2]]  # row 2 has 3 tokens
            with inject_residuals(model, 1, positions, _vectors(3, 1, 64), backend=backend):
                assert "forward" in model.backbone.__dict__  # routed while open
                model.hf(input_ids=IDS, attention_mask=MASK)
                if how == "exception":
                    raise _Boom()
                if how == "interrupt":
                    raise KeyboardInterrupt()

    if expected is None:
        body()
    else:
        with pytest.raises(expected):
            body()
    assert hook_snapshot(model) == hooks
    assert _slots(model) == slots
    assert not nnsight_backend._SESSIONS and not tl_backend._SESSIONS
    if backend == "transformer_lens":  # the cached bridge keeps none of the block's TL hooks either
        bridge = tl_backend._BRIDGES[model.hf].bridge
        assert not any(point.fwd_hooks for point in bridge.hook_dict.values())


def test_mixing_backends_on_one_model_is_refused(model):
    slots = _slots(model)
    with pytest.raises(BackendError, match="same backend"):
        with capture_residuals(model, 0, backend="nnsight"):
            with inject_residuals(model, 1, [[0], [0], [0]], _vectors(3, 1, 64), backend="transformer_lens"):
                pass
    assert _slots(model) == slots


def test_nnsight_import_patches_are_undone():
    script = textwrap.dedent("""
        import torch
        backward = torch.Tensor.backward
        from activation_oracles.hooks import capture_residuals
        from activation_oracles.tiny import tiny_model
        model = tiny_model(n_layers=2, d_model=32, tokenizer=None)
        with capture_residuals(model, 1, backend="nnsight") as cache:
            model.hf(torch.tensor([[1, 2, 3]]))
        import nnsight
        assert cache[1].shape == (1, 3, 32)
        assert torch.Tensor.backward is backward, "Tensor.backward left patched"
        assert "save" not in vars(object), ".save left mounted on object"
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


# -- the embedded model --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm_own():
    """The embedded SmolLM2-135M (fp32), this module's own copy: the eager-attention test switches it."""
    import activation_oracles as ao

    return ao.load_model("smollm2-135m")


def _embedded_runs(model, backends):
    tok = model.tokenizer
    rows = [tok(text)["input_ids"] for text in ("The owl flew over the quiet forest at night.", "Hello there!")]
    ids, mask = _left_pad(rows, pad=tok.pad_token_id)
    positions, vectors = [[0, -1], [1, 2]], _vectors(2, 2, model.d_model, seed=5)
    runs = {}
    for backend in backends:
        cache, _ = _capture(model, backend, [7, 15, 22], ids=ids, mask=mask)
        runs[backend] = cache, _inject_logits(model, backend, "norm_add", positions, vectors, ids=ids, mask=mask)
    return runs, mask.bool()


@pytest.mark.slow
def test_parity_on_embedded_model(smollm_own):
    runs, real = _embedded_runs(smollm_own, ["torch", *ALT])
    (ref_cache, ref_logits), (nn_cache, nn_logits), (tl_cache, tl_logits) = runs.values()
    for layer in (7, 15, 22):
        _close(nn_cache[layer], ref_cache[layer])  # the same model runs: everything agrees
        # TL's bridge computes attention eagerly, the model here uses SDPA: equal up to float reordering
        # (~1e-6 relative), which SmolLM2's massive activations (|h| ~ 2e4) turn into ~1e-4 absolute
        _rel_close(tl_cache[layer], ref_cache[layer], real)
    _close(nn_logits, ref_logits)
    _rel_close(tl_logits, ref_logits, real)


@pytest.mark.slow
def test_transformer_lens_parity_on_embedded_model_with_eager_attention(smollm_own):
    smollm_own.hf.set_attn_implementation("eager")  # the kernel the bridge uses: now bit-for-bit comparable
    try:
        runs, _ = _embedded_runs(smollm_own, ["torch", "transformer_lens"])
    finally:
        smollm_own.hf.set_attn_implementation("sdpa")
    (ref_cache, ref_logits), (tl_cache, tl_logits) = runs.values()
    for layer in (7, 15, 22):
        _close(tl_cache[layer], ref_cache[layer])
    _close(tl_logits, ref_logits)
