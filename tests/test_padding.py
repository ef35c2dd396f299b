"""Batched (left-padded) forward passes equal one-at-a-time ones, on absolute- and rotary-position models."""

from __future__ import annotations

import pytest
import torch

import activation_oracles as ao
from activation_oracles.padding import left_pad

from conftest import TINY_ARCHS

PROMPTS = ["Hi.", "The owl hunts mice in the quiet forest at night.", "Two horses grazed by the river."]


def _model(arch: str, tokenizer, **overrides) -> ao.Model:
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(TINY_ARCHS[arch], vocab_size=len(tokenizer), **overrides)
    kw.pop("pad_token_id", None)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(AutoConfig.for_model(arch, **kw)).eval()
    return ao.as_model(hf, tokenizer)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama", "gemma2"])
def test_batched_capture_equals_single_capture(arch, embedded_tokenizer):
    m = _model(arch, embedded_tokenizer)
    together = ao.capture(m, PROMPTS, chat=False, layers=[0, 2], batch_size=3)
    for prompt, acts in zip(PROMPTS, together):
        alone = ao.capture(m, prompt, chat=False, layers=[0, 2])
        assert acts.token_ids == alone.token_ids
        for layer in (0, 2):
            torch.testing.assert_close(acts.vectors[layer], alone.vectors[layer], rtol=1e-4, atol=1e-5)


def test_left_pad_positions_start_at_each_rows_first_token():
    b = left_pad([[3, 4], [5, 6, 7, 8], [9]], pad_id=0)
    assert b.offsets == (2, 0, 3)
    for row, n in zip(range(3), (2, 4, 1)):
        assert b.position_ids[row, -n:].tolist() == list(range(n))
        assert b.attention_mask[row].sum() == n


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "llama", "gemma2"])
def test_batched_answer_scoring_equals_single(arch, embedded_tokenizer):
    """The evals' chat scoring (activation_oracles.forward underneath) reads padded rows right."""
    from activation_oracles.evals.chat import answer_logprobs

    m = _model(arch, embedded_tokenizer)
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    answers = ["Yes", "No, it is not.", "Maybe"]
    together = answer_logprobs(m, chats, answers, batch_size=3)
    alone = [answer_logprobs(m, [c], [a], batch_size=1)[0] for c, a in zip(chats, answers)]
    assert together == pytest.approx(alone, rel=1e-4, abs=1e-4)


def test_label_logprobs_score_only_labelled_columns():
    from activation_oracles.forward import label_logprobs

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 10)
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, -100, -100, -100, 9]])
    lp, scored = label_logprobs(logits, labels)
    expect = torch.log_softmax(logits, -1)
    assert scored.tolist() == [[True, True, True], [False, False, True]]
    assert lp[0].tolist() == pytest.approx([expect[0, 0, 3].item(), expect[0, 1, 4].item(), expect[0, 2, 5].item()])
    assert lp[1].tolist() == pytest.approx([0.0, 0.0, expect[1, 2, 9].item()])


def _greedy_alone(m: ao.Model, ids: list[int], n: int) -> list[int]:
    """Greedy continuation by hand: argmax of a full forward pass per token (no cache, no padding)."""
    row = list(ids)
    with torch.no_grad():
        for _ in range(n):
            row.append(int(m.hf(input_ids=torch.tensor([row])).logits[0, -1].argmax()))
    return row[len(ids):]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_batched_generation_equals_greedy_by_hand(arch, embedded_tokenizer):
    """forward.generate (the one decoding loop: ask, evaluation, rollouts, chat replies) on padded rows."""
    from activation_oracles.forward import generate

    m = _model(arch, embedded_tokenizer)
    tok = embedded_tokenizer
    rows = [tok(p)["input_ids"] for p in PROMPTS]
    batch = left_pad(rows, 0)
    with torch.no_grad():
        out = generate(m.hf, tok, batch.input_ids, batch.attention_mask, 6)
    stops = {tok.convert_tokens_to_ids("<|im_end|>"), tok.eos_token_id}
    for ids, got in zip(rows, out):
        expect = _greedy_alone(m, ids, 6)
        cut = next((i for i, t in enumerate(expect) if t in stops), None)
        assert got.ids == expect[:cut]
        assert got.stop == (expect[cut] if cut is not None else None)


def test_batched_capture_equals_single_capture_on_the_embedded_model(smollm):
    together = ao.capture(smollm, PROMPTS, chat=False, layers=[7, 15], batch_size=3)
    for prompt, acts in zip(PROMPTS, together):
        alone = ao.capture(smollm, prompt, chat=False, layers=[7, 15])
        assert acts.token_ids == alone.token_ids
        for layer in (7, 15):
            a, b = acts.vectors[layer].float(), alone.vectors[layer].float()
            # relative to each row's size: SmolLM2 has channels near 26,000 beside ones near 1
            err = (a - b).norm(dim=-1) / b.norm(dim=-1)
            assert float(err.max()) < 1e-3, (prompt, layer, float(err.max()))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2", "gpt_neox"])
def test_batched_choose_equals_one_at_a_time(arch, embedded_tokenizer):
    """choose() runs its prompts left-padded together and continues every choice from the cache: prompts
    of different lengths and answers of different lengths give what each item alone gives."""
    m = _model(arch, embedded_tokenizer, initializer_range=0.5)  # peaked logits: a misplaced token shows
    oracle = ao.ActivationOracle.untrained(m)
    acts = ao.capture(m, PROMPTS, chat=False, layers=[1])
    items = [acts[0], acts[1].last(5), acts[2].last(1), acts[1]]  # 2, 5, 1 and 11+ positions
    choices = ["Yes", "No", "Perhaps not at all"]
    together = oracle.choose(items, "Is it about an animal?", choices, batch_size=4)
    for a, got in zip(items, together):
        alone = oracle.choose(a, "Is it about an animal?", choices)
        assert got == pytest.approx(alone, abs=1e-5)
        assert max(got.values()) > 0.4  # not a near-uniform model, where any bug would pass
    # and one item alone equals whole sequences (prompt + answer) scored by hand, one forward each
    from activation_oracles.hooks import inject_residuals
    from activation_oracles.prompt import answer_ids

    q = "Is it about an animal?"
    item = oracle._item(items[1], q, None)
    raw = oracle.choice_logprobs(items[1], q, choices)
    for c in choices:
        ans = answer_ids(m.tokenizer, oracle.config, item.prompt, items[1].layer, q, c)
        ids = torch.tensor([list(item.prompt.input_ids) + ans])
        with torch.no_grad(), inject_residuals(m, oracle.config.injection_layer, [list(item.prompt.positions)],
                                               [item.vectors_KD]):
            logp = torch.log_softmax(m.hf(input_ids=ids).logits[0].double(), -1)
        n = len(item.prompt.input_ids)
        assert raw[c] == pytest.approx(sum(float(logp[n - 1 + j, t]) for j, t in enumerate(ans)), abs=1e-4)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_continuations_from_the_cache_equal_whole_sequences(arch, embedded_tokenizer):
    """forward.continuation_logprobs, shared by choose() and TruthfulQA MC: left-padded prompts, answers of
    different lengths continued from the repeated cache, each equal to its whole sequence scored alone."""
    from activation_oracles.forward import continuation_logprobs, output_cache
    from activation_oracles.padding import pad_id_of

    m = _model(arch, embedded_tokenizer, initializer_range=0.5)
    tok = m.tokenizer
    prompts = [tok(p)["input_ids"] for p in PROMPTS[:2]]
    conts = [tok(" Yes")["input_ids"], tok(" No, it is not at all.")["input_ids"],
             tok(" A river")["input_ids"], tok(" Owls")["input_ids"]]
    batch = left_pad(prompts, pad_id_of(tok))
    with torch.no_grad():
        out = m.hf(**batch.forward_kwargs(), use_cache=True)
    got = continuation_logprobs(m.hf, output_cache(out), batch.attention_mask, out.logits[:, -1], conts,
                                pad_id_of(tok))
    for k, c in enumerate(conts):
        p = prompts[k // 2]
        with torch.no_grad():
            logp = torch.log_softmax(m.hf(input_ids=torch.tensor([p + c])).logits[0].double(), -1)
        want = sum(float(logp[len(p) - 1 + j, t]) for j, t in enumerate(c))
        assert got[k] == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="3 continuations for 2 prompts"):
        continuation_logprobs(m.hf, None, batch.attention_mask, out.logits[:, -1], conts[:3], 0)
