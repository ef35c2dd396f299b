"""Bad input gets a clear, typed error and changes nothing: one test per case.

Every error is an ``AOError`` and the built-in a Python user would catch; its message
names what was given and what was expected; no hook is left on the model.
"""

from __future__ import annotations

import pytest
import torch

import activation_oracles as ao
from activation_oracles import errors as E
from activation_oracles.hooks import capture_residuals, inject_residuals

IDS = torch.tensor([[1, 17, 42, 5, 99, 23]])


def _typed(excinfo, cls, builtin):
    err = excinfo.value
    assert type(err) is cls, type(err)
    assert isinstance(err, E.AOError) and isinstance(err, builtin)
    return str(err)


def test_every_error_class_is_an_aoerror_and_a_builtin():
    classes = [c for c in vars(E).values() if isinstance(c, type) and issubclass(c, E.AOError) and c is not E.AOError]
    assert len(classes) >= 12
    for cls in classes:
        builtins = [b for b in cls.__mro__[1:] if b.__module__ == "builtins" and b not in (Exception, BaseException,
                                                                                          object)]
        assert builtins, f"{cls.__name__} subclasses no specific built-in"


def test_unknown_model_spec():
    with pytest.raises(E.ModelSpecError) as err:
        ao.load_model("no such model!")
    message = _typed(err, E.ModelSpecError, ValueError)
    assert "no such model!" in message and "smollm2-135m" in message


def test_local_directory_without_config(tmp_path):
    with pytest.raises(E.ModelSpecError) as err:
        ao.load_model(tmp_path)
    message = _typed(err, E.ModelSpecError, ValueError)
    assert "config.json" in message and str(tmp_path) in message


def test_hub_id_while_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(E.OfflineError) as err:
        ao.load_model("nonexistent-org/nonexistent-model")
    message = _typed(err, E.OfflineError, ConnectionError)
    assert "nonexistent-org/nonexistent-model" in message
    assert "local directory" in message and "offline" in message


def test_layer_index_out_of_range(bare_tiny, hooks_of):
    with pytest.raises(E.LayerNotFoundError) as err:
        with capture_residuals(bare_tiny, [1, 4]):
            bare_tiny.hf(IDS)
    message = _typed(err, E.LayerNotFoundError, IndexError)
    assert "4" in message and "[-4, 4)" in message
    with pytest.raises(E.LayerNotFoundError):
        with inject_residuals(bare_tiny, -5, [[0]], torch.ones(1, bare_tiny.d_model)):
            bare_tiny.hf(IDS)
    assert hooks_of(bare_tiny) == frozenset()


def test_layer_percent_out_of_range(bare_tiny):
    with pytest.raises(E.LayerNotFoundError) as err:
        bare_tiny.layer_at(100)
    assert "100" in _typed(err, E.LayerNotFoundError, IndexError)


def test_position_out_of_range_for_a_row(bare_tiny, hooks_of):
    # Row 1 is left-padded to 3 real tokens, so position 4 exists in row 0 but not in row 1.
    ids = torch.tensor([[1, 17, 42, 5, 99], [0, 0, 8, 9, 10]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    with pytest.raises(E.PositionError) as err:
        with inject_residuals(bare_tiny, 1, [[4], [4]], torch.ones(2, 1, bare_tiny.d_model)):
            bare_tiny.hf(input_ids=ids, attention_mask=mask)
    message = _typed(err, E.PositionError, IndexError)
    assert "position 4" in message and "row 1" in message and "3 tokens" in message
    with pytest.raises(E.PositionError):
        with capture_residuals(bare_tiny, [1], positions=[[0], [-4]]):
            bare_tiny.hf(input_ids=ids, attention_mask=mask)
    assert hooks_of(bare_tiny) == frozenset()


def test_position_out_of_range_in_capture_helper(tiny, hooks_of):
    with pytest.raises(E.PositionError) as err:
        ao.capture(tiny, "hello", positions=[10_000])
    assert "10000" in _typed(err, E.PositionError, IndexError)
    assert hooks_of(tiny) == frozenset()


def test_vector_count_mismatch(bare_tiny, hooks_of):
    with pytest.raises(E.VectorShapeError) as err:
        with inject_residuals(bare_tiny, 1, [[0, 1, 2]], torch.ones(2, bare_tiny.d_model)):
            pytest.fail("must not run")
    message = _typed(err, E.VectorShapeError, ValueError)
    assert "(2, 64)" in message and "3 positions" in message
    with pytest.raises(E.VectorShapeError):  # rows of vectors vs rows of positions
        with inject_residuals(bare_tiny, 1, [[0], [1]], torch.ones(3, 1, bare_tiny.d_model)):
            pytest.fail("must not run")
    assert hooks_of(bare_tiny) == frozenset()


def test_vector_width_mismatch(bare_tiny, hooks_of):
    with pytest.raises(E.VectorShapeError) as err:
        with inject_residuals(bare_tiny, 1, [[0]], torch.ones(1, 576)):
            pytest.fail("must not run")
    message = _typed(err, E.VectorShapeError, ValueError)
    assert "576" in message and "d_model=64" in message
    assert hooks_of(bare_tiny) == frozenset()


def test_batch_size_mismatch_at_forward_time(bare_tiny, hooks_of):
    with pytest.raises(E.VectorShapeError) as err:
        with inject_residuals(bare_tiny, 1, [[0]], torch.ones(1, bare_tiny.d_model)):
            bare_tiny.hf(torch.cat([IDS, IDS]))
    assert "batch size 2" in _typed(err, E.VectorShapeError, ValueError)
    assert hooks_of(bare_tiny) == frozenset()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_vectors(bare_tiny, hooks_of, bad):
    v = torch.ones(1, bare_tiny.d_model)
    v[0, 3] = bad
    for mode in ("norm_add", "add", "replace"):
        with pytest.raises(E.NonFiniteError) as err:
            with inject_residuals(bare_tiny, 1, [[0]], v, mode=mode):
                pytest.fail("must not run")
        assert "NaN or inf" in _typed(err, E.NonFiniteError, ValueError)
    assert hooks_of(bare_tiny) == frozenset()


def test_non_finite_coeff(bare_tiny, hooks_of):
    with pytest.raises(E.NonFiniteError) as err:
        with inject_residuals(bare_tiny, 1, [[0]], torch.ones(1, bare_tiny.d_model), coeff=float("nan")):
            pytest.fail("must not run")
    assert "coeff" in _typed(err, E.NonFiniteError, ValueError)
    assert hooks_of(bare_tiny) == frozenset()


def test_zero_vector_with_norm_add(bare_tiny, hooks_of):
    with pytest.raises(E.NonFiniteError) as err:
        with inject_residuals(bare_tiny, 1, [[0]], torch.zeros(1, bare_tiny.d_model)):
            pytest.fail("must not run")
    assert "zero" in _typed(err, E.NonFiniteError, ValueError)
    assert hooks_of(bare_tiny) == frozenset()


def test_unknown_backend(tiny, hooks_of):
    with pytest.raises(E.BackendError) as err:
        with capture_residuals(tiny, [1], backend="jax"):
            pytest.fail("must not run")
    message = _typed(err, E.BackendError, ValueError)
    assert "'jax'" in message and "torch" in message
    with pytest.raises(E.BackendError):
        with inject_residuals(tiny, 1, [[0]], torch.ones(1, tiny.d_model), backend="jax"):
            pytest.fail("must not run")
    with pytest.raises(E.BackendError):
        ao.capture(tiny, "hello", backend="jax")
    assert hooks_of(tiny) == frozenset()


def test_unknown_mode(bare_tiny, hooks_of):
    with pytest.raises(E.ModeError) as err:
        with inject_residuals(bare_tiny, 1, [[0]], torch.ones(1, bare_tiny.d_model), mode="multiply"):
            pytest.fail("must not run")
    message = _typed(err, E.ModeError, ValueError)
    assert "'multiply'" in message and "norm_add" in message
    assert hooks_of(bare_tiny) == frozenset()


@pytest.mark.parametrize("prompt", ["", "   \n", [], [{"role": "user", "content": ""}]],
                         ids=["empty", "whitespace", "empty-list", "empty-message"])
def test_empty_prompt(tiny, hooks_of, prompt):
    with pytest.raises(E.EmptyInputError) as err:
        ao.capture(tiny, prompt)
    assert "empty" in _typed(err, E.EmptyInputError, ValueError) or "no prompts" in str(err.value)
    assert hooks_of(tiny) == frozenset()


def test_not_a_decoder_only_lm():
    from transformers import BertConfig, BertForMaskedLM

    bert = BertForMaskedLM(BertConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, vocab_size=64))
    with pytest.raises(E.NotDecoderLMError) as err:
        with capture_residuals(bert, [0]):
            pytest.fail("must not run")
    message = _typed(err, E.NotDecoderLMError, TypeError)
    assert "BertForMaskedLM" in message and "AutoModelForCausalLM" in message
    with pytest.raises(E.NotDecoderLMError):
        ao.capture(torch.nn.Linear(2, 2), "hello")
    from conftest import hook_snapshot

    assert hook_snapshot(bert) == frozenset()


def test_bad_positions_argument(bare_tiny, hooks_of):
    for bad in ([[0, 0]], [[]], [["a"]], [[0], [1, 2]]):
        with pytest.raises(E.PositionError):
            with capture_residuals(bare_tiny, [1], positions=bad):
                pytest.fail("must not run")
    with pytest.raises(E.PositionError):
        with inject_residuals(bare_tiny, 1, [], torch.ones(1, bare_tiny.d_model)):
            pytest.fail("must not run")
    assert hooks_of(bare_tiny) == frozenset()


def test_unknown_dtype():
    from activation_oracles.models import resolve_dtype

    with pytest.raises(E.ModelSpecError) as err:
        resolve_dtype("fp12")
    assert "fp12" in _typed(err, E.ModelSpecError, ValueError)


def test_a_model_without_tokenizer_gets_missing_tokenizer_error(bare_tiny):
    with pytest.raises(E.MissingTokenizerError) as err:
        ao.capture(bare_tiny, "Hello there.")
    assert "has no tokenizer" in _typed(err, E.MissingTokenizerError, ValueError)
    with pytest.raises(E.MissingTokenizerError) as err:
        ao.ActivationOracle.untrained(bare_tiny)
    assert "ao.as_model(model, tokenizer)" in _typed(err, E.MissingTokenizerError, ValueError)
