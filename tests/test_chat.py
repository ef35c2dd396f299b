"""No default system prompt in target contexts or oracle prompts; content spans hold content tokens only."""

from __future__ import annotations

import pytest

from activation_oracles.chat import content_spans, injects_default_system, render_text, with_system
from activation_oracles.config import OracleConfig
from activation_oracles.errors import ConfigError, PositionError
from activation_oracles.prompt import answer_ids, build_prompt
from activation_oracles.training.sources import encode_chat

DEFAULT = "You are a helpful AI assistant named SmolLM"


def test_smollm2_template_injects_a_default(embedded_tokenizer):
    assert injects_default_system(embedded_tokenizer)
    bare = embedded_tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert DEFAULT in bare  # the fact the setting exists for


def test_training_contexts_carry_no_default_system_prompt(embedded_tokenizer):
    ids = encode_chat(embedded_tokenizer, [{"role": "user", "content": "Tell me about owls."}])
    text = embedded_tokenizer.decode(ids)
    assert DEFAULT not in text and "Tell me about owls." in text
    with_default = embedded_tokenizer.apply_chat_template([{"role": "user", "content": "Tell me about owls."}],
                                                          tokenize=True, return_dict=False)
    assert len(ids) + 15 <= len(with_default)


def test_a_dialogue_with_its_own_system_turn_is_unchanged(embedded_tokenizer):
    msgs = [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "hi"}]
    assert with_system(embedded_tokenizer, msgs) == msgs
    assert render_text(embedded_tokenizer, msgs) == embedded_tokenizer.apply_chat_template(msgs, tokenize=False)


def test_oracle_prompt_has_no_default_system_prompt(embedded_tokenizer):
    cfg = OracleConfig(base_model="smollm2-135m", n_layers=30, d_model=576)
    assert cfg.system_prompt == ""
    p = build_prompt(embedded_tokenizer, cfg, 15, 2, "Is this about owls?")
    assert DEFAULT not in embedded_tokenizer.decode(list(p.input_ids))
    legacy = OracleConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "system_prompt"})
    assert legacy.system_prompt is None  # oracle folders from before the setting keep their prompt
    old = build_prompt(embedded_tokenizer, legacy, 15, 2, "Is this about owls?")
    assert DEFAULT in embedded_tokenizer.decode(list(old.input_ids))
    assert len(old.input_ids) - len(p.input_ids) >= 15
    # the answer tokens follow the same prompt: the turn ends with <|im_end|>
    ans = answer_ids(embedded_tokenizer, cfg, p, 15, "Is this about owls?", "Yes")
    assert embedded_tokenizer.decode(ans).strip() == "Yes<|im_end|>"


def test_custom_system_prompt_round_trips(embedded_tokenizer):
    cfg = OracleConfig(base_model="x", system_prompt="You read activations.")
    assert OracleConfig.from_dict(cfg.to_dict()).system_prompt == "You read activations."
    p = build_prompt(embedded_tokenizer, cfg, 15, 1, "Why?")
    assert "You read activations." in embedded_tokenizer.decode(list(p.input_ids))


@pytest.mark.parametrize("bad", [3, ["x"], {"a": 1}])
def test_system_prompt_of_the_wrong_type_is_refused(bad):
    with pytest.raises(ConfigError, match="system_prompt"):
        OracleConfig(base_model="x", system_prompt=bad)


@pytest.mark.parametrize("text", ["Owls hunt at night.", "  padded text  ", "Ünïcödé wörds – ok?", "a"])
def test_content_spans_cover_the_text_and_nothing_else(embedded_tokenizer, text):
    ids, spans = content_spans(embedded_tokenizer, [{"role": "user", "content": text}])
    (start, stop), = spans
    assert embedded_tokenizer.decode(ids[start:stop]).strip() == text.strip()
    special = set(embedded_tokenizer.all_special_ids)
    assert not special & set(ids[start:stop])
    assert embedded_tokenizer.convert_ids_to_tokens(ids[start - 1]).startswith("Ċ")  # the newline after "user"
    end = ids.index(embedded_tokenizer.convert_tokens_to_ids("<|im_end|>"), stop)
    assert embedded_tokenizer.decode(ids[stop:end]).strip() == ""  # only the text's own trailing spaces


def test_content_spans_of_several_turns(embedded_tokenizer):
    msgs = [{"role": "user", "content": "First question?"}, {"role": "assistant", "content": "An answer."},
            {"role": "user", "content": "Second one."}]
    ids, spans = content_spans(embedded_tokenizer, msgs)
    assert [embedded_tokenizer.decode(ids[a:b]) for a, b in spans] == ["First question?", "Second one."]
    _, both = content_spans(embedded_tokenizer, msgs, roles=("user", "assistant"))
    assert len(both) == 3


def test_content_spans_of_nothing_is_a_typed_error(embedded_tokenizer):
    with pytest.raises(PositionError, match="no non-empty message"):
        content_spans(embedded_tokenizer, [{"role": "user", "content": "   "}])


@pytest.mark.slow
def test_capture_content_positions_read_only_the_users_text(smollm):
    import activation_oracles as ao

    acts = ao.capture(smollm, "Owls hunt at night.", positions="content")
    assert "".join(acts.tokens[p] for p in acts.positions).replace("Ġ", " ") == "Owls hunt at night."
    assert "<|im_start|>" in acts.tokens  # the template stays visible in the tokens
    whole = ao.capture(smollm, "Owls hunt at night.")
    layer = acts.layer
    assert (whole.vectors[layer][list(acts.positions)] - acts.vectors[layer]).abs().max() < 1e-4
    plain = ao.capture(smollm, "Owls hunt at night.", positions="content", chat=False)
    assert len(plain.positions) == len(acts.positions)
