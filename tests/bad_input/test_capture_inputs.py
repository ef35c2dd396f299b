"""``ao.capture`` on bad input: every case a typed error that names the value, with nothing changed.

Each row is (prompt, keyword arguments, expected error, text the message must contain).
One tiny model serves the module; after each case it must carry no hook and compute the
same logits as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import activation_oracles as ao
from activation_oracles import errors as E

from _support import expect, logits, small_model

OK = "Tell me about owls."
CHAT_OK = [{"role": "user", "content": OK}]


@pytest.fixture(scope="module")
def model(embedded_tokenizer: Any) -> Any:
    return small_model(embedded_tokenizer, positions=256)


@pytest.fixture(scope="module")
def reference(model: Any) -> Any:
    return logits(model)


def P(prompt: Any, kwargs: dict[str, Any], cls: type, needle: Any, id: str) -> Any:  # noqa: A002
    return pytest.param(prompt, kwargs, cls, needle, id=id)


PROMPTS = [
    P(None, {}, E.ArgumentTypeError, "None", "prompt-None"),
    P(5, {}, E.ArgumentTypeError, "int", "prompt-int"),
    P(1.5, {}, E.ArgumentTypeError, "float", "prompt-float"),
    P(b"\xff\xfe hi", {}, E.ArgumentTypeError, "bytes", "prompt-bytes"),
    P(bytearray(b"hi"), {}, E.ArgumentTypeError, "bytearray", "prompt-bytearray"),
    P({"role": "user", "content": "hi"}, {}, E.ArgumentTypeError, "one message", "prompt-bare-message"),
    P(object(), {}, E.ArgumentTypeError, "object", "prompt-object"),
    P("", {}, E.EmptyInputError, "empty", "prompt-empty"),
    P("   \n\t", {}, E.EmptyInputError, "empty", "prompt-whitespace"),
    P([], {}, E.EmptyInputError, "no prompts", "prompt-empty-list"),
    P((), {}, E.EmptyInputError, "no prompts", "prompt-empty-tuple"),
    P(["ok", None], {}, E.ArgumentTypeError, "prompt 1", "list-holding-None"),
    P(["ok", 3], {}, E.ArgumentTypeError, "prompt 1", "list-holding-int"),
    P(["ok", b"x"], {}, E.ArgumentTypeError, "prompt 1", "list-holding-bytes"),
    P(["ok", ""], {}, E.EmptyInputError, "empty", "list-holding-empty"),
    P(["ok", "bad \ud800"], {}, E.PromptError, "\\ud800", "list-holding-surrogate"),
    # lone surrogates: what undecodable bytes become in Python text
    P("hi \ud800 there", {}, E.PromptError, "\\ud800", "surrogate-high"),
    P("\udfff", {}, E.PromptError, "\\udfff", "surrogate-low-alone"),
    P("caf\udce9", {}, E.PromptError, "\\udce9", "surrogate-escaped-byte"),
    P("a" * 50 + "\udc80", {}, E.PromptError, "character 50", "surrogate-position-named"),
]

CHATS = [
    P([{"role": "user", "content": None}], {}, E.PromptError, "None", "content-None"),
    P([{"role": "user", "content": 5}], {}, E.PromptError, "5", "content-int"),
    P([{"role": "user", "content": ["a"]}], {}, E.PromptError, "['a']", "content-list"),
    P([{"role": "user", "content": {"text": "a"}}], {}, E.PromptError, "text", "content-dict"),
    P([{"role": "user", "content": b"a"}], {}, E.PromptError, "b'a'", "content-bytes"),
    P([{"role": "user", "content": "x\ud800"}], {}, E.PromptError, "\\ud800", "content-surrogate"),
    P([{"role": "wizard", "content": "hi"}], {}, E.PromptError, "'wizard'", "role-wizard"),
    P([{"role": "User", "content": "hi"}], {}, E.PromptError, "'User'", "role-capitalised"),
    P([{"role": "", "content": "hi"}], {}, E.PromptError, "''", "role-empty"),
    P([{"role": None, "content": "hi"}], {}, E.PromptError, "None", "role-None"),
    P([{"role": 1, "content": "hi"}], {}, E.PromptError, "1", "role-int"),
    P([{"role": "user "}], {}, E.PromptError, "'content'", "content-missing"),
    P([{"content": "hi"}], {}, E.PromptError, "'role'", "role-missing"),
    P([{}], {}, E.PromptError, "'role'", "message-empty-dict"),
    P([{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}], {}, E.PromptError, "[1]",
      "second-message-bad-role"),
    P([{"role": "system", "content": "s"}, {"role": "user", "content": None}], {}, E.PromptError, "[1]",
      "second-message-None"),
    P([{"role": "user", "content": ""}], {}, E.EmptyInputError, "empty", "all-messages-empty"),
    P([{"role": "user", "content": "  "}, {"role": "assistant", "content": ""}], {}, E.EmptyInputError, "empty",
      "all-messages-blank"),
    P([[{"role": "user", "content": "ok"}], [{"role": "wizard", "content": "x"}]], {}, E.PromptError, "'wizard'",
      "list-of-chats-one-bad"),
]

LAYERS = [
    P(OK, {"layers": 1.5}, E.LayerNotFoundError, "1.5", "layers-float"),
    P(OK, {"layers": "1"}, E.LayerNotFoundError, "'1'", "layers-str"),
    P(OK, {"layers": True}, E.LayerNotFoundError, "True", "layers-bool"),
    P(OK, {"layers": None, "layer_percent": "50"}, E.LayerNotFoundError, "'50'", "percent-str"),
    P(OK, {"layers": [0, 1.0]}, E.LayerNotFoundError, "1.0", "layers-list-with-float"),
    P(OK, {"layers": [0, "1"]}, E.LayerNotFoundError, "'1'", "layers-list-with-str"),
    P(OK, {"layers": [False]}, E.LayerNotFoundError, "False", "layers-list-with-bool"),
    P(OK, {"layers": []}, E.LayerNotFoundError, "layers=[]", "layers-empty-list"),
    P(OK, {"layers": ()}, E.LayerNotFoundError, "layers=[]", "layers-empty-tuple"),
    P(OK, {"layers": {0: 1}}, E.LayerNotFoundError, "dict", "layers-dict"),
    P(OK, {"layers": 2}, E.LayerNotFoundError, "layer 2", "layers-2-of-2"),
    P(OK, {"layers": 99}, E.LayerNotFoundError, "layer 99", "layers-99"),
    P(OK, {"layers": -3}, E.LayerNotFoundError, "layer -3", "layers-minus-3"),
    P(OK, {"layers": [0, 7]}, E.LayerNotFoundError, "layer 7", "layers-list-one-out"),
    P(OK, {"layer_percent": 0}, E.LayerNotFoundError, "0", "percent-0"),
    P(OK, {"layer_percent": 100}, E.LayerNotFoundError, "100", "percent-100"),
    P(OK, {"layer_percent": -5}, E.LayerNotFoundError, "-5", "percent-negative"),
    P(OK, {"layer_percent": 150.0}, E.LayerNotFoundError, "150", "percent-150"),
    P(OK, {"layer_percent": float("nan")}, E.LayerNotFoundError, "nan", "percent-nan"),
    P(OK, {"layer_percent": float("inf")}, E.LayerNotFoundError, "inf", "percent-inf"),
    P(OK, {"layer_percent": None}, E.LayerNotFoundError, "None", "percent-None"),
    P(OK, {"layer_percent": True}, E.LayerNotFoundError, "True", "percent-bool"),
    P(OK, {"layer_percent": []}, E.LayerNotFoundError, "[]", "percent-empty-list"),
    P(OK, {"layer_percent": [50, "75"]}, E.LayerNotFoundError, "'75'", "percent-list-with-str"),
    P(OK, {"layer_percent": [50, 120]}, E.LayerNotFoundError, "120", "percent-list-one-out"),
]

POSITIONS = [
    P(OK, {"positions": "last:99"}, E.PositionError, "last:99", "last-99"),
    P(OK, {"positions": "last:0"}, E.PositionError, "last:0", "last-0"),
    P(OK, {"positions": "last:-1"}, E.PositionError, "last:-1", "last-negative"),
    P(OK, {"positions": "last:"}, E.PositionError, "last:", "last-no-number"),
    P(OK, {"positions": "last:1.5"}, E.PositionError, "last:1.5", "last-float"),
    P(OK, {"positions": "first:2"}, E.PositionError, "first:2", "first-N"),
    P(OK, {"positions": "0:999"}, E.PositionError, "999", "slice-stop-beyond"),
    P(OK, {"positions": "-999:"}, E.PositionError, "-999", "slice-start-before"),
    P(OK, {"positions": "999:"}, E.PositionError, "999", "slice-start-beyond"),
    P(OK, {"positions": "5:3"}, E.PositionError, "5:3", "slice-empty"),
    P(OK, {"positions": "3:3"}, E.PositionError, "3:3", "slice-zero-width"),
    P(OK, {"positions": "0:4:2"}, E.PositionError, "0:4:2", "slice-step"),
    P(OK, {"positions": "a:b"}, E.PositionError, "a:b", "slice-words"),
    P(OK, {"positions": ""}, E.PositionError, "''", "spec-empty-string"),
    P(OK, {"positions": "everything"}, E.PositionError, "everything", "spec-word"),
    P(OK, {"positions": "1,2"}, E.PositionError, "1,2", "spec-comma-list"),
    P(OK, {"positions": 999}, E.PositionError, "999", "int-beyond"),
    P(OK, {"positions": -999}, E.PositionError, "-999", "int-before"),
    P(OK, {"positions": 1.5}, E.PositionError, "1.5", "float"),
    P(OK, {"positions": True}, E.PositionError, "True", "bool"),
    P(OK, {"positions": [0, 0]}, E.PositionError, "repeats", "list-duplicate"),
    P(OK, {"positions": [0, -999]}, E.PositionError, "-999", "list-one-out"),
    P(OK, {"positions": [0, 1.0]}, E.PositionError, "1.0", "list-with-float"),
    P(OK, {"positions": [0, "1"]}, E.PositionError, "'1'", "list-with-str"),
    P(OK, {"positions": [True]}, E.PositionError, "True", "list-with-bool"),
    P(OK, {"positions": []}, E.PositionError, "zero positions", "list-empty"),
    P(OK, {"positions": {1, 2}}, E.PositionError, "set", "set"),
    P(OK, {"positions": object()}, E.PositionError, "object", "object"),
    P(["A much longer prompt about owls and their habits.", "Hi"], {"positions": "last:5", "chat": False}, E.PositionError,
      "prompt 1", "batch-second-prompt-too-short"),
]

OTHER_ARGS = [
    P(OK, {"batch_size": 0}, E.ArgumentError, "batch_size=0", "batch-0"),
    P(OK, {"batch_size": -1}, E.ArgumentError, "batch_size=-1", "batch-minus-1"),
    P(["a", "b"], {"batch_size": -1}, E.ArgumentError, "batch_size=-1", "batch-minus-1-list"),
    P(OK, {"batch_size": 1.5}, E.ArgumentTypeError, "1.5", "batch-float"),
    P(OK, {"batch_size": "2"}, E.ArgumentTypeError, "'2'", "batch-str"),
    P(OK, {"batch_size": None}, E.ArgumentTypeError, "None", "batch-None"),
    P(OK, {"batch_size": True}, E.ArgumentTypeError, "True", "batch-bool"),
    P(OK, {"chat": "yes"}, E.ArgumentTypeError, "'yes'", "chat-str"),
    P(OK, {"chat": 1}, E.ArgumentTypeError, "chat=1", "chat-int"),
    P(OK, {"chat": None}, E.ArgumentTypeError, "None", "chat-None"),
    P(OK, {"add_generation_prompt": "no"}, E.ArgumentTypeError, "'no'", "agp-str"),
    P(OK, {"add_generation_prompt": 0}, E.ArgumentTypeError, "=0", "agp-int"),
    P(OK, {"backend": "jax"}, E.BackendError, "jax", "backend-unknown"),
    P(OK, {"backend": ""}, E.BackendError, "''", "backend-empty"),
    P(OK, {"backend": "Torch"}, E.BackendError, "Torch", "backend-case"),
    # longer than the model's 256 positions (config.max_position_embeddings)
    P("owl " * 300, {}, E.PromptTooLongError, "256 positions", "too-long"),
    P("owl " * 300, {"chat": False}, E.PromptTooLongError, "256 positions", "too-long-plain"),
    P(["short", "owl " * 300], {}, E.PromptTooLongError, "prompt 1", "too-long-second-of-batch"),
    P([{"role": "user", "content": "owl " * 300}], {}, E.PromptTooLongError, "tokens", "too-long-chat"),
]


@pytest.mark.parametrize("prompt, kwargs, cls, needle", PROMPTS + CHATS + LAYERS + POSITIONS + OTHER_ARGS)
def test_capture_rejects(model: Any, reference: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                         prompt: Any, kwargs: dict[str, Any], cls: type, needle: str) -> None:
    monkeypatch.chdir(tmp_path)  # anything written relative to the working folder would show
    expect(lambda: ao.capture(model, prompt, **kwargs), cls, needle, folder=tmp_path, model=model,
           reference=reference)


BAD_MODELS = [
    pytest.param(None, "NoneType", id="None"),
    pytest.param("tiny-llama", "str", id="a-name-not-a-model"),
    pytest.param(42, "int", id="int"),
]


@pytest.mark.parametrize("bad, needle", BAD_MODELS)
def test_capture_rejects_non_models(bad: Any, needle: str) -> None:
    expect(lambda: ao.capture(bad, OK), E.NotDecoderLMError, needle)


def test_a_good_call_still_works(model: Any) -> None:
    """The checks reject only what is wrong: the boundary values pass."""
    acts = ao.capture(model, OK, layers=[0, -1], positions="last:1")
    n = len(acts.token_ids)
    assert acts.layers == (-1, 0) and len(acts) == 1
    assert len(ao.capture(model, OK, layers=1, positions=f"last:{n}")) == n
    assert len(ao.capture(model, OK, layers=1, positions=f"-{n}:{n}")) == n
    assert len(ao.capture(model, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                                  {"role": "assistant", "content": "a"}], layers=1)) > 0
    assert isinstance(ao.capture(model, ["a", "b", "c"], layers=1, batch_size=1), list)
