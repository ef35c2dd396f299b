"""The Activations type: views, arithmetic with provenance checks, and pickle-free files."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

import activation_oracles as ao
from activation_oracles.activations import Activations, parse_position_spec
from activation_oracles.errors import (
    ActivationsMismatchError,
    AOError,
    EmptyInputError,
    PositionError,
    UnsafeFileError,
)

N_TOKENS, D = 8, 4


def _acts(positions=tuple(range(N_TOKENS)), layers=(3,), seed=0, token_ids=None, d=D, **kw) -> Activations:
    g = torch.Generator().manual_seed(seed)
    token_ids = tuple(range(10, 10 + N_TOKENS)) if token_ids is None else token_ids
    return Activations(
        vectors={layer: torch.randn(len(positions), d, generator=g) for layer in layers},
        positions=tuple(positions), token_ids=token_ids, tokens=tuple(f"t{i}" for i in token_ids),
        model_name=kw.pop("model_name", "toy"), n_layers=6, d_model=d, **kw)


def test_parse_position_spec():
    assert parse_position_spec("all", 5) == [0, 1, 2, 3, 4]
    assert parse_position_spec(None, 3) == [0, 1, 2]
    assert parse_position_spec("last:3", 5) == [2, 3, 4]
    assert parse_position_spec("last:5", 5) == [0, 1, 2, 3, 4] and parse_position_spec("-5:5", 5) == [0, 1, 2, 3, 4]
    assert parse_position_spec("2:5", 8) == [2, 3, 4]
    assert parse_position_spec(":2", 8) == [0, 1] and parse_position_spec("-2:", 8) == [6, 7]
    assert parse_position_spec(3, 5) == [3] and parse_position_spec(-1, 5) == [4]
    assert parse_position_spec([0, -1], 5) == [0, 4]
    # out of range is an error, never a silent clamp (last:9 of 5 tokens would give 5 vectors)
    for bad in ("last:0", "last:9", "0:9", "-9:", "first:2", "5:2", 7, [0, 0], [1.5], ["a"], 2.0):
        with pytest.raises(PositionError):
            parse_position_spec(bad, 5)


def test_select_keeps_the_right_rows():
    acts = _acts()
    sub = acts.select([5, 1, -1])
    assert sub.positions == (5, 1, 7)
    assert torch.equal(sub.vectors[3], acts.vectors[3][[5, 1, 7]])
    assert sub.token_ids == acts.token_ids and sub.model_name == "toy"
    with pytest.raises(PositionError):
        sub.select([2])  # not captured any more
    with pytest.raises(PositionError):
        acts.select([])


def test_last_token_segment():
    acts = _acts()
    assert acts.last(3).positions == (5, 6, 7)
    assert torch.equal(acts.last(3).vectors[3], acts.vectors[3][5:])
    assert acts.token(2).positions == (2,) and torch.equal(acts.token(2).vectors[3], acts.vectors[3][2:3])
    assert acts.token(-1).positions == (7,)
    assert acts.segment(2, 5).positions == (2, 3, 4)
    assert acts.segment(-3).positions == (5, 6, 7)
    with pytest.raises(PositionError):
        acts.last(0)
    partial = _acts(positions=(1, 4, 6))
    assert partial.segment(3, 7).positions == (4, 6)
    assert partial.last(1).positions == (6,)
    with pytest.raises(PositionError):
        partial.segment(2, 4)  # holds no captured position


def test_layers_views():
    acts = _acts(layers=(2, 5))
    assert acts.layers == (2, 5)
    with pytest.raises(ActivationsMismatchError):
        _ = acts.layer
    one = acts.at_layer(5)
    assert one.layer == 5 and torch.equal(one.vectors_for(), acts.vectors[5])
    with pytest.raises(ActivationsMismatchError):
        acts.vectors_for(9)


def test_constructor_validates():
    with pytest.raises(ActivationsMismatchError):
        Activations({3: torch.ones(2, 5)}, positions=(0, 1), token_ids=(1, 2), tokens=("a", "b"),
                    model_name="toy", n_layers=6, d_model=4)
    with pytest.raises(PositionError):
        Activations({3: torch.ones(1, 4)}, positions=(7,), token_ids=(1, 2), tokens=("a", "b"),
                    model_name="toy", n_layers=6, d_model=4)
    with pytest.raises(EmptyInputError):
        Activations({}, positions=(0,), token_ids=(1,), tokens=("a",), model_name="toy", n_layers=6, d_model=4)


def test_subtraction():
    a, b = _acts(seed=1, model_name="tuned"), _acts(seed=2, model_name="base")
    diff = a - b
    assert diff.kind == "difference" and diff.model_name == "tuned - base"
    assert torch.equal(diff.vectors[3], a.vectors[3] - b.vectors[3])
    assert diff.positions == a.positions and diff.token_ids == a.token_ids
    assert torch.equal((a - a).vectors[3], torch.zeros(N_TOKENS, D))


@pytest.mark.parametrize("other", [
    lambda: _acts(token_ids=tuple(range(20, 20 + N_TOKENS))),
    lambda: _acts(positions=(0, 1)),
    lambda: _acts(layers=(4,)),
    lambda: _acts(d=5),
], ids=["tokens", "positions", "layers", "d_model"])
def test_subtraction_mismatch_raises(other):
    with pytest.raises(ActivationsMismatchError) as err:
        _acts() - other()
    assert isinstance(err.value, AOError) and isinstance(err.value, ValueError)
    assert "differ" in str(err.value) and "same prompt" in str(err.value)


def test_save_load_round_trip(tmp_path):
    acts = _acts(layers=(1, 3), meta={"prompt": "owls", "note": [1, 2]}).select([0, 2, 7])
    path = acts.save(tmp_path / "acts.safetensors")
    assert path.is_file() and not (tmp_path / "acts.safetensors.tmp").exists()
    back = Activations.load(path)
    assert back.layers == acts.layers
    for layer in acts.layers:
        assert torch.equal(back.vectors[layer], acts.vectors[layer])
        assert back.vectors[layer].dtype == acts.vectors[layer].dtype
    for field in ("positions", "token_ids", "tokens", "model_name", "n_layers", "d_model", "kind", "meta"):
        assert getattr(back, field) == getattr(acts, field), field


def test_save_load_bf16_and_difference(tmp_path):
    acts = (_acts(seed=1) - _acts(seed=2)).to(torch.bfloat16)
    back = Activations.load(acts.save(tmp_path / "d.safetensors"))
    assert back.kind == "difference" and back.dtype == torch.bfloat16
    assert torch.equal(back.vectors[3], acts.vectors[3])


def test_round_trip_of_a_real_capture(tiny, tmp_path):
    acts = ao.capture(tiny, "Tell me about owls.", layers=[1, 2], positions="last:5")
    back = Activations.load(acts.save(tmp_path / "owls.safetensors"))
    assert back.tokens == acts.tokens and back.token_ids == acts.token_ids
    assert all(torch.equal(back.vectors[k], acts.vectors[k]) for k in (1, 2))


class _Trap:
    """Unpickling this runs ``os.mkdir(marker)``: if the marker exists, something unpickled the file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "torch.save-legacy", "pickle"])
def test_loading_a_pickle_is_refused_without_unpickling(tmp_path, writer):
    marker = tmp_path / "unpickled"
    path = tmp_path / "acts.pt"
    payload = {"layer_3": torch.ones(2, 4), "trap": _Trap(str(marker))}
    if writer == "torch.save":
        torch.save(payload, path)
    elif writer == "torch.save-legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as fh:
            pickle.dump(payload, fh)
    with pytest.raises(UnsafeFileError) as err:
        Activations.load(path)
    assert isinstance(err.value, AOError) and isinstance(err.value, ValueError)
    assert "safetensors" in str(err.value)
    assert not marker.exists()


def test_loading_garbage_or_foreign_safetensors(tmp_path):
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01not a tensor file at all")
    with pytest.raises(UnsafeFileError):
        Activations.load(garbage)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.ones(2)}, str(foreign))
    with pytest.raises(ActivationsMismatchError, match="not an activation_oracles"):
        Activations.load(foreign)
    with pytest.raises(FileNotFoundError):
        Activations.load(tmp_path / "missing.safetensors")


def test_saved_files_get_the_usual_mode_not_mkstemps_private_one(tmp_path):
    import os

    from activation_oracles.activations import Activations
    from activation_oracles.files import current_umask

    acts = Activations(vectors={0: torch.zeros(2, 4)}, positions=(0, 1), token_ids=(5, 6), tokens=("a", "b"),
                       model_name="m", n_layers=2, d_model=4)
    path = acts.save(tmp_path / "acts.safetensors")
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~current_umask()


def test_n_positions_is_what_the_repr_shows():
    from activation_oracles.activations import Activations

    acts = Activations(vectors={0: torch.zeros(3, 4)}, positions=(0, 1, 2), token_ids=(5, 6, 7),
                       tokens=("a", "b", "c"), model_name="m", n_layers=2, d_model=4)
    assert acts.n_positions == 3 == len(acts) and "n_positions=3" in repr(acts)
