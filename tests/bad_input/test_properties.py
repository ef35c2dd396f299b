"""Property tests (hypothesis): position specs resolve like Python indexing or fail typed; left padding is exact.

Position specs are checked against an independent answer key (Python's own list indexing
and slicing); left padding against per-row results, in ``capture`` and in the oracle's batches.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import activation_oracles as ao
from activation_oracles.activations import parse_position_spec
from activation_oracles.errors import PositionError

from _support import small_model

SPEC = settings(max_examples=150, deadline=None)
n_tokens = st.integers(min_value=1, max_value=64)


@SPEC
@given(n=n_tokens, k=st.integers(min_value=-3, max_value=80))
def test_last_k(n: int, k: int) -> None:
    if 1 <= k <= n:
        assert parse_position_spec(f"last:{k}", n) == list(range(n))[-k:]
    else:
        with pytest.raises(PositionError, match=f"last:{k}" if k >= 0 else "not understood"):
            parse_position_spec(f"last:{k}", n)


@SPEC
@given(n=n_tokens, start=st.one_of(st.none(), st.integers(-80, 80)), stop=st.one_of(st.none(), st.integers(-80, 80)))
def test_slices_match_python_or_fail(n: int, start: int | None, stop: int | None) -> None:
    spec = f"{'' if start is None else start}:{'' if stop is None else stop}"
    inside = all(b is None or -n <= b <= n for b in (start, stop))
    expected = list(range(n))[start:stop]
    if inside and expected:
        assert parse_position_spec(spec, n) == expected
    else:
        with pytest.raises(PositionError) as info:
            parse_position_spec(spec, n)
        assert spec in str(info.value)


@SPEC
@given(n=n_tokens, p=st.integers(-100, 100))
def test_single_index(n: int, p: int) -> None:
    if -n <= p < n:
        assert parse_position_spec(p, n) == [list(range(n))[p]]
    else:
        with pytest.raises(PositionError, match=str(p)):
            parse_position_spec(p, n)


@SPEC
@given(n=n_tokens, data=st.data())
def test_index_lists(n: int, data: Any) -> None:
    idx = data.draw(st.lists(st.integers(-n - 3, n + 3), max_size=12))
    inside = all(-n <= p < n for p in idx)
    normal = [p % n for p in idx] if inside else []
    if inside and idx and len(set(normal)) == len(normal):
        out = parse_position_spec(idx, n)
        assert out == [list(range(n))[p] for p in idx]  # order kept, negatives from the end
        assert all(0 <= p < n for p in out)
    else:
        with pytest.raises(PositionError):
            parse_position_spec(idx, n)


@settings(max_examples=60, deadline=None)
@given(n=n_tokens, spec=st.one_of(st.text(max_size=8), st.floats(), st.booleans(), st.none(),
                                  st.lists(st.floats(), min_size=1, max_size=3)))
def test_anything_else_is_a_position_error_or_a_valid_selection(n: int, spec: Any) -> None:
    """Whatever is passed, the result is a non-empty list of distinct in-range indices, or a PositionError."""
    try:
        out = parse_position_spec(spec, n)
    except PositionError:
        return
    assert out and len(set(out)) == len(out) and all(0 <= p < n for p in out)


# -- left padding ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model(embedded_tokenizer: Any) -> Any:
    return small_model(embedded_tokenizer, positions=256)


WORDS = ["owl", "night", "the", "river", "quietly", "7", "hunts", "a", "blue", "mouse"]
prompts = st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=9).map(" ".join), min_size=1, max_size=4)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=prompts, batch_size=st.integers(1, 4), chat=st.booleans())
def test_left_padded_capture_equals_one_at_a_time(model: Any, texts: list[str], batch_size: int, chat: bool) -> None:
    batch = ao.capture(model, texts, layers=[0, 1], positions="all", chat=chat, batch_size=batch_size)
    for text, got in zip(texts, batch):
        alone = ao.capture(model, text, layers=[0, 1], positions="all", chat=chat)
        assert got.token_ids == alone.token_ids and got.positions == alone.positions
        for layer in (0, 1):
            torch.testing.assert_close(got.vectors[layer], alone.vectors[layer], atol=1e-5, rtol=1e-4)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(st.integers(3, 500), min_size=1, max_size=12), min_size=1, max_size=6))
def test_oracle_left_pad_right_aligns_every_row(model: Any, rows: list[list[int]]) -> None:
    oracle = ao.ActivationOracle.untrained(model)
    ids, mask = oracle._left_pad(rows)
    width = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id
    assert ids.shape == mask.shape == (len(rows), width)
    for i, r in enumerate(rows):
        assert ids[i, width - len(r):].tolist() == r  # the row itself, flush right
        assert mask[i].tolist() == [0] * (width - len(r)) + [1] * len(r)
        assert ids[i, :width - len(r)].tolist() == [pad] * (width - len(r))
