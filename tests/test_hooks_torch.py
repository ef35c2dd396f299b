"""The torch hook backend against independent truths: transformers' own hidden states, hand-computed
updates, unbatched runs, and hook dictionaries that end exactly as they started."""

from __future__ import annotations

import pytest
import torch

import activation_oracles as ao
from activation_oracles.errors import LayerNotFoundError, PositionError
from activation_oracles.hooks import capture_residuals, inject_residuals

IDS = torch.tensor([[1, 17, 42, 5, 99, 23, 64, 8]])


def _logits(model, ids, **kw):
    with torch.no_grad():
        return model.hf(input_ids=ids, **kw).logits


def _rand_vectors(k: int, d: int, seed: int = 0, batch: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (k, d) if batch is None else (batch, k, d)
    return torch.randn(*shape, generator=g)


def _left_pad(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask


# -- capture == transformers' hidden states ----------------------------------------------------------

def test_capture_equals_output_hidden_states(bare_tiny):
    n = bare_tiny.n_layers
    with torch.no_grad():
        hidden = bare_tiny.hf(IDS, output_hidden_states=True).hidden_states
        with capture_residuals(bare_tiny, list(range(n)), stop_early=False) as cache:
            bare_tiny.hf(IDS)
    assert len(hidden) == n + 1
    for i in range(n - 1):
        assert cache[i].dtype == torch.float32
        assert torch.equal(cache[i], hidden[i + 1]), i
    # transformers applies the final norm to the last entry of hidden_states: the last block's raw output
    # differs from it, and the final norm of what we captured reproduces it exactly.
    assert not torch.allclose(cache[n - 1], hidden[n])
    assert torch.equal(bare_tiny.hf.model.norm(cache[n - 1]), hidden[n])


@pytest.mark.parametrize("name", ["gpt2", "gemma2", "qwen3", "gpt_neox"])
def test_capture_equals_hidden_states_on_other_architectures(name, build_arch):
    model = build_arch(name)
    ids = torch.tensor([[3, 9, 27, 11, 40]])
    with torch.no_grad():
        hidden = model(ids, output_hidden_states=True).hidden_states
        with capture_residuals(model, [0, 1], stop_early=True) as cache:
            model(ids)
    for i in (0, 1):
        assert torch.equal(cache[i], hidden[i + 1]), (name, i)


def test_capture_is_detached_and_sized(bare_tiny):
    with capture_residuals(bare_tiny, [1]) as cache:
        bare_tiny.hf(IDS)
    assert cache[1].shape == (1, IDS.shape[1], bare_tiny.d_model)
    assert not cache[1].requires_grad and cache[1].grad_fn is None


def test_negative_layer_indices(bare_tiny):
    n = bare_tiny.n_layers
    with torch.no_grad(), capture_residuals(bare_tiny, [-1, n - 1, -3], stop_early=False) as cache:
        bare_tiny.hf(IDS)
    assert set(cache) == {-1, n - 1, -3}  # keys as given
    assert torch.equal(cache[-1], cache[n - 1])
    with torch.no_grad(), capture_residuals(bare_tiny, [n - 3]) as ref:
        bare_tiny.hf(IDS)
    assert torch.equal(cache[-3], ref[n - 3])

    v = _rand_vectors(1, bare_tiny.d_model)
    with inject_residuals(bare_tiny, -2, [[3]], v):
        neg = _logits(bare_tiny, IDS)
    with inject_residuals(bare_tiny, n - 2, [[3]], v):
        pos = _logits(bare_tiny, IDS)
    assert torch.equal(neg, pos)
    assert not torch.equal(neg, _logits(bare_tiny, IDS))


def test_capture_shared_positions(bare_tiny):
    ids = torch.cat([IDS, IDS.flip(-1)])
    with torch.no_grad(), capture_residuals(bare_tiny, [2], stop_early=False) as full:
        bare_tiny.hf(ids)
    with torch.no_grad(), capture_residuals(bare_tiny, [2], positions=[0, 3, -1]) as cache:
        bare_tiny.hf(ids)
    assert cache[2].shape == (2, 3, bare_tiny.d_model)
    assert torch.equal(cache[2], full[2][:, [0, 3, 7]])


def test_capture_per_row_positions(bare_tiny):
    ids = torch.cat([IDS, IDS.flip(-1)])
    with torch.no_grad(), capture_residuals(bare_tiny, [1], stop_early=False) as full:
        bare_tiny.hf(ids)
    with torch.no_grad(), capture_residuals(bare_tiny, [1], positions=[[0, 5], [-1, 2]]) as cache:
        bare_tiny.hf(ids)
    assert torch.equal(cache[1][0], full[1][0, [0, 5]])
    assert torch.equal(cache[1][1], full[1][1, [7, 2]])


def test_capture_records_the_latest_pass(bare_tiny):
    other = torch.tensor([[7, 7, 7, 7]])
    with torch.no_grad(), capture_residuals(bare_tiny, [0], stop_early=False) as cache:
        bare_tiny.hf(IDS)
        bare_tiny.hf(other)
    with torch.no_grad(), capture_residuals(bare_tiny, [0]) as ref:
        bare_tiny.hf(other)
    assert torch.equal(cache[0], ref[0])


# -- stop_early --------------------------------------------------------------------------------------

def _count_block_calls(model):
    calls = [0] * model.n_layers
    handles = [block.register_forward_pre_hook(lambda mod, args, i=i: calls.__setitem__(i, calls[i] + 1))
               for i, block in enumerate(model.layers)]
    return calls, handles


def test_stop_early_skips_later_blocks_and_is_absorbed(bare_tiny):
    calls, handles = _count_block_calls(bare_tiny)
    head_calls = []
    head_handle = bare_tiny.hf.lm_head.register_forward_pre_hook(lambda mod, args: head_calls.append(1))
    reached_after_call = False
    try:
        with torch.no_grad(), capture_residuals(bare_tiny, [0, 1], stop_early=True) as cache:
            bare_tiny.hf(IDS)
            reached_after_call = True  # the stop ends the block at the model call
    finally:
        for h in handles + [head_handle]:
            h.remove()
    assert calls == [1, 1, 0, 0]
    assert head_calls == []
    assert not reached_after_call
    assert set(cache) == {0, 1}


def test_without_stop_early_the_full_logits_come_out(bare_tiny):
    calls, handles = _count_block_calls(bare_tiny)
    try:
        with torch.no_grad(), capture_residuals(bare_tiny, [1], stop_early=False) as cache:
            logits = bare_tiny.hf(IDS).logits
    finally:
        for h in handles:
            h.remove()
    assert calls == [1, 1, 1, 1]
    assert torch.equal(logits, _logits(bare_tiny, IDS))
    assert cache[1].shape[1] == IDS.shape[1]


# -- injection: independent truths -------------------------------------------------------------------

def test_norm_add_with_coeff_zero_is_bit_identical(bare_tiny):
    base = _logits(bare_tiny, IDS)
    v = _rand_vectors(3, bare_tiny.d_model)
    with inject_residuals(bare_tiny, 1, [[1, 4, 6]], v, mode="norm_add", coeff=0.0):
        patched = _logits(bare_tiny, IDS)
    assert torch.equal(patched, base)


@pytest.mark.parametrize("mode", ["norm_add", "add", "replace"])
@pytest.mark.parametrize("p", [0, 3, 7])
def test_injection_changes_only_positions_at_or_after_p(bare_tiny, mode, p):
    base = _logits(bare_tiny, IDS)
    with inject_residuals(bare_tiny, 1, [[p]], _rand_vectors(1, bare_tiny.d_model) * 5, mode=mode):
        patched = _logits(bare_tiny, IDS)
    assert torch.equal(patched[0, :p], base[0, :p])
    assert not torch.allclose(patched[0, p], base[0, p])
    if p + 1 < IDS.shape[1]:
        assert not torch.allclose(patched[0, p + 1:], base[0, p + 1:])


def _expected_update(h, v, mode, coeff):
    if mode == "norm_add":
        return h + coeff * h.norm() * v / v.norm()
    if mode == "add":
        return h + coeff * v
    return v.clone()


@pytest.mark.parametrize("mode,coeff", [("norm_add", 1.0), ("norm_add", 2.5), ("add", 1.0), ("add", -0.5),
                                        ("replace", 1.0)])
def test_hand_computed_update_on_one_layer_model(mode, coeff):
    from activation_oracles.tiny import tiny_model

    model = tiny_model(n_layers=1, d_model=32, tokenizer=None, seed=3)
    positions = [2, 5]
    v = _rand_vectors(2, 32, seed=7)
    with torch.no_grad(), capture_residuals(model, [0]) as cache:
        model.hf(IDS)
    h = cache[0][0].clone()  # [seq, d]
    expected_h = h.clone()
    for k, p in enumerate(positions):
        expected_h[p] = _expected_update(h[p], v[k], mode, coeff)
    with torch.no_grad():
        expected_logits = model.hf.lm_head(model.hf.model.norm(expected_h))

    with inject_residuals(model, 0, [positions], v, mode=mode, coeff=coeff):
        # a capture registered inside the injection sees the injected residual
        with torch.no_grad(), capture_residuals(model, [0], stop_early=False) as injected:
            logits = model.hf(IDS).logits[0]
    torch.testing.assert_close(injected[0][0], expected_h, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-5, atol=1e-5)
    untouched = [i for i in range(IDS.shape[1]) if i not in positions]
    assert torch.equal(injected[0][0, untouched], h[untouched])
    if mode == "norm_add" and coeff == 1.0:  # the update itself has the residual's norm
        delta = injected[0][0, positions] - h[positions]
        torch.testing.assert_close(delta.norm(dim=-1), h[positions].norm(dim=-1))


def test_injection_into_a_later_block_matches_running_the_rest_by_hand(bare_tiny):
    """Inject at block 1's output, then run blocks 2.. by hand from the patched residual via injection of
    the whole row in replace mode: both routes give the same logits."""
    v = _rand_vectors(1, bare_tiny.d_model, seed=4)
    with torch.no_grad(), capture_residuals(bare_tiny, [1]) as cache:
        bare_tiny.hf(IDS)
    h = cache[1][0].clone()
    patched = h.clone()
    patched[4] = h[4] + h[4].norm() * v[0] / v[0].norm()
    seq = list(range(IDS.shape[1]))
    with inject_residuals(bare_tiny, 1, [seq], patched, mode="replace"):
        by_hand = _logits(bare_tiny, IDS)
    with inject_residuals(bare_tiny, 1, [[4]], v):
        injected = _logits(bare_tiny, IDS)
    torch.testing.assert_close(injected, by_hand, rtol=1e-5, atol=1e-5)


def test_vectors_are_cast_to_residual_dtype():
    from activation_oracles.tiny import tiny_model

    model = tiny_model(n_layers=2, d_model=32, tokenizer=None, dtype=torch.bfloat16)
    with torch.no_grad(), capture_residuals(model, [0]) as cache:
        model.hf(IDS)
    h = cache[0][0]
    assert h.dtype == torch.bfloat16
    for vdtype in (torch.float32, torch.float64, torch.float16):
        v = _rand_vectors(1, 32, seed=1).to(vdtype)
        with inject_residuals(model, 0, [[3]], v, mode="norm_add"):
            with torch.no_grad(), capture_residuals(model, [0]) as injected:
                model.hf(IDS)
        out = injected[0][0]
        assert out.dtype == torch.bfloat16
        hf, vf = h[3].float(), v[0].float()
        expected = (hf + hf.norm() * vf / vf.norm()).to(torch.bfloat16)
        assert torch.equal(out[3], expected)
        assert torch.equal(out[:3], h[:3]) and torch.equal(out[4:], h[4:])


def test_vectors_may_be_a_batch_tensor_or_a_list(bare_tiny):
    ids = torch.cat([IDS, IDS.flip(-1)])
    v = _rand_vectors(2, bare_tiny.d_model, batch=2)
    with inject_residuals(bare_tiny, 1, [[1, 2], [3, 4]], v):
        as_tensor = _logits(bare_tiny, ids)
    with inject_residuals(bare_tiny, 1, [[1, 2], [3, 4]], [v[0], v[1]]):
        as_list = _logits(bare_tiny, ids)
    assert torch.equal(as_tensor, as_list)


# -- batched, left-padded == unbatched ---------------------------------------------------------------

ROWS = [[1, 17, 42, 5, 99, 23, 64, 8], [9, 30, 2, 77], [55, 6, 12, 90, 33, 4]]


def test_batched_left_padded_capture_equals_unbatched(bare_tiny):
    ids, mask = _left_pad(ROWS)
    with torch.no_grad(), capture_residuals(bare_tiny, [1, 3], stop_early=False) as batched:
        bare_tiny.hf(input_ids=ids, attention_mask=mask)
    with torch.no_grad(), capture_residuals(bare_tiny, [1, 3], positions=[[0, -1], [0, -1], [0, -1]]) as picked:
        bare_tiny.hf(input_ids=ids, attention_mask=mask)
    assert torch.equal(batched.attention_mask, mask)
    for b, row in enumerate(ROWS):
        with torch.no_grad(), capture_residuals(bare_tiny, [1, 3]) as single:
            bare_tiny.hf(input_ids=torch.tensor([row]))
        offset = ids.shape[1] - len(row)
        for layer in (1, 3):
            torch.testing.assert_close(batched[layer][b, offset:], single[layer][0], rtol=0, atol=1e-5)
            # positions are each row's own indices: 0 is the row's first real token, not padding
            torch.testing.assert_close(picked[layer][b], single[layer][0, [0, -1]], rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["norm_add", "add", "replace"])
def test_batched_left_padded_injection_equals_unbatched(bare_tiny, mode):
    ids, mask = _left_pad(ROWS)
    positions = [[0, 5], [1, 3], [-1, 2]]
    vectors = _rand_vectors(2, bare_tiny.d_model, batch=3, seed=11)
    with inject_residuals(bare_tiny, 1, positions, vectors, mode=mode):
        batched = _logits(bare_tiny, ids, attention_mask=mask)
    for b, row in enumerate(ROWS):
        with inject_residuals(bare_tiny, 1, [positions[b]], vectors[b], mode=mode):
            single = _logits(bare_tiny, torch.tensor([row]))
        offset = ids.shape[1] - len(row)
        torch.testing.assert_close(batched[b, offset:], single[0], rtol=0, atol=1e-5)


# -- generate(): prefill only ------------------------------------------------------------------------

def test_injection_touches_only_the_prefill_pass_of_generate(bare_tiny):
    model = bare_tiny
    prompt = IDS[:, :5]
    v = _rand_vectors(1, model.d_model, seed=5) * 10
    n_new = 4
    # Position 0 is the prompt's first token; in a decode step the new token is also at index 0 of its
    # pass, so an injection that leaked into decode steps would hit every generated token.
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    before: list[torch.Tensor] = []
    h_before = model.layers[1].register_forward_hook(lambda mod, a, out: before.append(out.detach().clone()))
    try:
        with inject_residuals(model, 1, [[0]], v, mode="replace"):
            h_after = model.layers[1].register_forward_hook(
                lambda mod, a, out: seen.append((before[-1], out.detach().clone())))
            try:
                with torch.no_grad():
                    out = model.hf.generate(prompt, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                            output_logits=True, return_dict_in_generate=True, pad_token_id=0)
            finally:
                h_after.remove()
    finally:
        h_before.remove()
    assert len(seen) == n_new  # one prefill + n_new - 1 decode passes
    modified = [not torch.equal(orig, new) for orig, new in seen]
    assert modified == [True] + [False] * (n_new - 1)

    # Independent check: a cache-free forward over the generated sequence, injecting at the prompt's
    # position 0 only, reproduces every step's logits. A decode-time injection would not.
    seq = out.sequences
    assert seq.shape[1] == prompt.shape[1] + n_new
    with inject_residuals(model, 1, [[0]], v, mode="replace"):
        full = _logits(model, seq)
    for step, step_logits in enumerate(out.logits):
        torch.testing.assert_close(step_logits[0], full[0, prompt.shape[1] - 1 + step], rtol=1e-4, atol=1e-4)
    assert torch.equal(seq[0, prompt.shape[1]:], full[0, prompt.shape[1] - 1:-1].argmax(-1))
    # and the injection did change what was generated vs. the plain model's logits
    plain = _logits(model, seq)
    assert not torch.allclose(plain[0, prompt.shape[1] - 1], full[0, prompt.shape[1] - 1])


# -- hooks are always removed ------------------------------------------------------------------------

def _ctx(kind, model):
    if kind == "capture":
        return capture_residuals(model, [1, 2], stop_early=False)
    if kind == "capture_stop":
        return capture_residuals(model, [1], stop_early=True)
    return inject_residuals(model, 1, [[2]], _rand_vectors(1, model.d_model))


KINDS = ["capture", "capture_stop", "inject"]


@pytest.mark.parametrize("kind", KINDS)
def test_no_hooks_after_normal_exit(bare_tiny, hooks_of, kind):
    assert hooks_of(bare_tiny) == frozenset()
    with _ctx(kind, bare_tiny):
        assert hooks_of(bare_tiny) != frozenset()  # they really were registered
        with torch.no_grad():
            bare_tiny.hf(IDS)
    assert hooks_of(bare_tiny) == frozenset()


@pytest.mark.parametrize("kind", KINDS)
def test_no_hooks_after_exception_inside_block(bare_tiny, hooks_of, kind):
    with pytest.raises(RuntimeError, match="boom"):
        with _ctx(kind, bare_tiny):
            raise RuntimeError("boom")
    assert hooks_of(bare_tiny) == frozenset()


@pytest.mark.parametrize("kind", KINDS)
def test_no_hooks_after_keyboard_interrupt_inside_block(bare_tiny, hooks_of, kind):
    with pytest.raises(KeyboardInterrupt):
        with _ctx(kind, bare_tiny):
            raise KeyboardInterrupt
    assert hooks_of(bare_tiny) == frozenset()


@pytest.mark.parametrize("kind", KINDS)
def test_no_hooks_after_keyboard_interrupt_during_forward(bare_tiny, hooks_of, kind):
    """Ctrl-C in the middle of the model call (raised from block 0, before our hooks fire)."""

    def interrupt(module, args):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with _ctx(kind, bare_tiny):
            handle = bare_tiny.layers[0].register_forward_pre_hook(interrupt)
            try:
                bare_tiny.hf(IDS)
            finally:
                handle.remove()
    assert hooks_of(bare_tiny) == frozenset()


@pytest.mark.parametrize("bad", [4, -5, 100])
def test_no_hooks_after_bad_layer_index(bare_tiny, hooks_of, bad):
    with pytest.raises(LayerNotFoundError):
        with capture_residuals(bare_tiny, [0, bad]):
            pytest.fail("the block must not run")
    with pytest.raises(LayerNotFoundError):
        with inject_residuals(bare_tiny, bad, [[0]], _rand_vectors(1, bare_tiny.d_model)):
            pytest.fail("the block must not run")
    assert hooks_of(bare_tiny) == frozenset()


def test_no_hooks_after_position_error_during_forward(bare_tiny, hooks_of):
    with pytest.raises(PositionError):
        with inject_residuals(bare_tiny, 1, [[50]], _rand_vectors(1, bare_tiny.d_model)):
            bare_tiny.hf(IDS)
    assert hooks_of(bare_tiny) == frozenset()


def test_hooks_added_by_others_are_left_alone(bare_tiny, hooks_of):
    mine = bare_tiny.layers[1].register_forward_hook(lambda *a: None)
    try:
        before = hooks_of(bare_tiny)
        with capture_residuals(bare_tiny, [1]):
            bare_tiny.hf(IDS)
        with inject_residuals(bare_tiny, 1, [[0]], _rand_vectors(1, bare_tiny.d_model)):
            bare_tiny.hf(IDS)
        assert hooks_of(bare_tiny) == before
    finally:
        mine.remove()


def test_hook_snapshot_is_unchanged_when_transformers_has_its_own_hooks(bare_tiny, hooks_of):
    # transformers 5 keeps output-recording hooks after a call with output_hidden_states=True
    with torch.no_grad():
        bare_tiny.hf(IDS, output_hidden_states=True)
    before = hooks_of(bare_tiny)
    with capture_residuals(bare_tiny, [0, 3], stop_early=False):
        bare_tiny.hf(IDS)
    assert hooks_of(bare_tiny) == before


def test_hooks_work_on_peft_wrapped_model(build_arch, hooks_of):
    import peft

    base = build_arch("llama")
    ids = torch.tensor([[3, 9, 27, 11, 40]])
    with torch.no_grad():
        hidden = base(ids, output_hidden_states=True).hidden_states
    lora = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules="all-linear"))  # LoRA B = 0: same fn
    before = hooks_of(lora)
    with torch.no_grad(), capture_residuals(lora, [0, 1]) as cache:
        lora(input_ids=ids)
    assert torch.equal(cache[0], hidden[1]) and torch.equal(cache[1], hidden[2])
    with torch.no_grad(), inject_residuals(lora, 0, [[2]], _rand_vectors(1, 16), coeff=0.0):
        assert torch.equal(lora(input_ids=ids).logits, base(ids).logits)
    assert hooks_of(lora) == before


# -- the embedded model ------------------------------------------------------------------------------

@pytest.mark.slow
def test_embedded_capture_equals_hidden_states_and_injection_is_local(smollm, hooks_of):
    ids = torch.tensor([smollm.tokenizer("The owl flew over the quiet barn.")["input_ids"]])
    layers = [0, 7, 15, 22]
    with torch.no_grad():
        hidden = smollm.hf(ids, output_hidden_states=True).hidden_states
        with capture_residuals(smollm, layers) as cache:
            smollm.hf(ids)
    for i in layers:
        assert torch.equal(cache[i], hidden[i + 1]), i
    before = hooks_of(smollm)  # after transformers added its own output recorders above
    p = 4
    with torch.no_grad():
        plain = smollm.hf(ids).logits
        with inject_residuals(smollm, 1, [[p]], cache[15][0, 2:3], mode="norm_add", coeff=1.0):
            patched = smollm.hf(ids).logits
        with inject_residuals(smollm, 1, [[p]], cache[15][0, 2:3], mode="norm_add", coeff=0.0):
            zero = smollm.hf(ids).logits
    assert torch.equal(zero, plain)
    assert torch.equal(patched[0, :p], plain[0, :p]) and not torch.allclose(patched[0, p], plain[0, p])
    assert hooks_of(smollm) == before
    assert ao.as_model(smollm) is smollm
