"""``Activations`` on bad input: construction, selection, files (save and load) and position specs.

Writes must be atomic (a failed save leaves the folder exactly as it was, no ``.tmp``), and a
damaged file names the metadata field at fault.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from activation_oracles import errors as E
from activation_oracles.activations import Activations, parse_position_spec

from _support import expect

D = 4


def make(**kw: Any) -> Activations:
    base: dict[str, Any] = dict(vectors={1: torch.ones(2, D)}, positions=(1, 2), token_ids=(5, 6, 7),
                                tokens=("a", "b", "c"), model_name="toy", n_layers=3, d_model=D)
    base.update(kw)
    return Activations(**base)


@pytest.fixture(scope="module")
def acts() -> Activations:
    return make()


# -- construction ----------------------------------------------------------------------------------------

CONSTRUCT = [
    ({"vectors": [torch.ones(2, D)]}, E.ArgumentTypeError, "list", "vectors-list"),
    ({"vectors": None}, E.ArgumentTypeError, "NoneType", "vectors-None"),
    ({"vectors": {}}, E.EmptyInputError, "at least one layer", "vectors-empty"),
    ({"vectors": {"1": torch.ones(2, D)}}, E.ArgumentTypeError, "'1'", "vectors-str-key"),
    ({"vectors": {True: torch.ones(2, D)}}, E.ArgumentTypeError, "True", "vectors-bool-key"),
    ({"vectors": {1.0: torch.ones(2, D)}}, E.ArgumentTypeError, "1.0", "vectors-float-key"),
    ({"vectors": {1: [[1.0] * D] * 2}}, E.ArgumentTypeError, "list", "vectors-value-list"),
    ({"vectors": {1: None}}, E.ArgumentTypeError, "NoneType", "vectors-value-None"),
    ({"vectors": {1: torch.ones(2, D, dtype=torch.long)}}, E.ArgumentTypeError, "torch.int64", "vectors-int-dtype"),
    ({"vectors": {1: torch.ones(2, D, dtype=torch.bool)}}, E.ArgumentTypeError, "torch.bool", "vectors-bool-dtype"),
    ({"vectors": {1: torch.ones(3, D)}}, E.ActivationsMismatchError, "(3, 4)", "vectors-rows"),
    ({"vectors": {1: torch.ones(2, D + 1)}}, E.ActivationsMismatchError, "(2, 5)", "vectors-width"),
    ({"vectors": {1: torch.ones(2 * D)}}, E.ActivationsMismatchError, "(8,)", "vectors-1d"),
    ({"vectors": {1: torch.ones(1, 2, D)}}, E.ActivationsMismatchError, "(1, 2, 4)", "vectors-3d"),
    ({"positions": [1.0, 2]}, E.ArgumentTypeError, "1.0", "positions-float"),
    ({"positions": (True, 2)}, E.ArgumentTypeError, "True", "positions-bool"),
    ({"positions": "12"}, E.ArgumentTypeError, "str", "positions-str"),
    ({"positions": None}, E.ArgumentTypeError, "NoneType", "positions-None"),
    ({"positions": (1, 9)}, E.PositionError, "position 9", "positions-outside"),
    ({"positions": (-1, 2)}, E.PositionError, "position -1", "positions-negative"),
    ({"positions": (), "vectors": {1: torch.ones(0, D)}}, E.PositionError, "zero positions", "positions-empty"),
    ({"token_ids": (5, "6", 7)}, E.ArgumentTypeError, "'6'", "token-ids-str"),
    ({"token_ids": None}, E.ArgumentTypeError, "NoneType", "token-ids-None"),
    ({"tokens": ("a", 2, "c")}, E.ArgumentTypeError, "2", "tokens-int"),
    ({"tokens": "abc"}, E.ArgumentTypeError, "abc", "tokens-str"),
    ({"tokens": ("a", "b")}, E.ActivationsMismatchError, "2 token strings", "tokens-count"),
    ({"model_name": None}, E.ArgumentTypeError, "None", "model-name-None"),
    ({"model_name": 3}, E.ArgumentTypeError, "3", "model-name-int"),
    ({"n_layers": 0}, E.ArgumentError, "n_layers=0", "n-layers-0"),
    ({"n_layers": "3"}, E.ArgumentTypeError, "'3'", "n-layers-str"),
    ({"n_layers": 3.0}, E.ArgumentTypeError, "3.0", "n-layers-float"),
    ({"d_model": -4}, E.ArgumentError, "d_model=-4", "d-model-negative"),
    ({"d_model": None}, E.ArgumentTypeError, "None", "d-model-None"),
    ({"kind": "delta"}, E.ActivationsMismatchError, "'delta'", "kind-unknown"),
    ({"kind": None}, E.ActivationsMismatchError, "None", "kind-None"),
    ({"meta": [1]}, E.ArgumentTypeError, "list", "meta-list"),
    ({"meta": {"t": torch.ones(1)}}, E.ArgumentTypeError, "JSON", "meta-tensor"),
    ({"meta": {"s": {1, 2}}}, E.ArgumentTypeError, "set", "meta-set"),
    ({"meta": {"x": float("nan"), "o": object()}}, E.ArgumentTypeError, "object", "meta-object"),
]


@pytest.mark.parametrize("kw, cls, needle", [pytest.param(*row[:3], id=row[3]) for row in CONSTRUCT])
def test_construction_rejects(kw: dict[str, Any], cls: type, needle: str) -> None:
    expect(lambda: make(**kw), cls, needle)


# -- selection -------------------------------------------------------------------------------------------

SELECT = [
    ("select", ([9],), E.PositionError, "token 9", "select-not-captured"),
    ("select", ([0],), E.PositionError, "token 0", "select-uncaptured-token"),
    ("select", ([],), E.PositionError, "zero positions", "select-empty"),
    ("select", (1,), E.ArgumentTypeError, "select(1)", "select-int"),
    ("select", ("1",), E.ArgumentTypeError, "'1'", "select-str"),
    ("select", (None,), E.ArgumentTypeError, "None", "select-None"),
    ("select", ([1.0],), E.ArgumentTypeError, "1.0", "select-float"),
    ("select", ([True],), E.ArgumentTypeError, "True", "select-bool"),
    ("token", (0,), E.PositionError, "token 0", "token-uncaptured"),
    ("token", (99,), E.PositionError, "token 99", "token-outside"),
    ("token", ("1",), E.ArgumentTypeError, "'1'", "token-str"),
    ("token", (1.5,), E.ArgumentTypeError, "1.5", "token-float"),
    ("last", (0,), E.PositionError, "last(0)", "last-0"),
    ("last", (-2,), E.PositionError, "last(-2)", "last-negative"),
    ("last", ("2",), E.ArgumentTypeError, "'2'", "last-str"),
    ("last", (None,), E.ArgumentTypeError, "None", "last-None"),
    ("segment", (0, 1), E.PositionError, "zero positions", "segment-captures-nothing"),
    ("segment", ("0", 2), E.ArgumentTypeError, "'0'", "segment-start-str"),
    ("segment", (0, 2.5), E.ArgumentTypeError, "2.5", "segment-end-float"),
    ("segment", (None,), E.ArgumentTypeError, "None", "segment-start-None"),
    ("at_layer", (2,), E.ActivationsMismatchError, "layer 2", "at-layer-missing"),
    ("at_layer", ("1",), E.ArgumentTypeError, "'1'", "at-layer-str"),
    ("vectors_for", (5,), E.ActivationsMismatchError, "layer 5", "vectors-for-missing"),
    ("vectors_for", (1.0,), E.ArgumentTypeError, "1.0", "vectors-for-float"),
]


@pytest.mark.parametrize("method, args, cls, needle", [pytest.param(*row[:4], id=row[4]) for row in SELECT])
def test_selection_rejects(acts: Activations, method: str, args: tuple, cls: type, needle: str) -> None:
    expect(lambda: getattr(acts, method)(*args), cls, needle)


def test_layer_of_a_multi_layer_set_and_subtraction_mismatch() -> None:
    two = make(vectors={1: torch.ones(2, D), 2: torch.ones(2, D)})
    expect(lambda: two.layer, E.ActivationsMismatchError, "(1, 2)")
    expect(lambda: make() - make(token_ids=(5, 6, 8)), E.ActivationsMismatchError, "token ids differ")
    expect(lambda: make() - two, E.ActivationsMismatchError, "layers differ")


# -- save ------------------------------------------------------------------------------------------------

def test_save_onto_a_directory(acts: Activations, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    expect(lambda: acts.save(tmp_path / "d"), E.OutputWriteError, "is a directory", folder=tmp_path)


def test_save_into_a_missing_folder(acts: Activations, tmp_path: Path) -> None:
    expect(lambda: acts.save(tmp_path / "no" / "a.safetensors"), E.OutputWriteError, ("does not exist", "no"),
           folder=tmp_path)


def test_save_under_a_file(acts: Activations, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    expect(lambda: acts.save(tmp_path / "f" / "a.safetensors"), E.OutputWriteError, "'" + str(tmp_path / "f"),
           folder=tmp_path)


@pytest.mark.parametrize("where", ["/proc/acts.safetensors", "/proc/self/acts.safetensors"])
def test_save_where_nothing_can_be_created(acts: Activations, where: str) -> None:
    expect(lambda: acts.save(where), E.OutputWriteError, where)


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied"), OSError(28, "No space left on device"),
                                   OSError(30, "Read-only file system")], ids=["read-only", "disk-full", "erofs"])
def test_save_failing_mid_write_leaves_nothing(acts: Activations, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               error: OSError) -> None:
    """A write that fails halfway (permissions checked late, a full disk) leaves no partial or .tmp file."""
    import safetensors.torch as st

    def failing(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise error

    (tmp_path / "old.safetensors").write_bytes(b"previous")
    monkeypatch.setattr(st, "save_file", failing)
    expect(lambda: acts.save(tmp_path / "old.safetensors"), E.OutputWriteError, error.strerror, folder=tmp_path)
    assert (tmp_path / "old.safetensors").read_bytes() == b"previous"  # the old file is intact


def test_save_in_a_read_only_folder(acts: Activations, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that refuses new files (root ignores chmod, so the refusal is simulated at mkstemp)."""
    import tempfile

    def refuse(*a: Any, **k: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    expect(lambda: acts.save(tmp_path / "a.safetensors"), E.OutputWriteError, "Permission denied", folder=tmp_path)


@pytest.mark.parametrize("path, cls, needle", [
    (None, E.ArgumentTypeError, "None"), (3, E.ArgumentTypeError, "int"), (b"a.st", E.ArgumentTypeError, "bytes"),
    ("", E.ArgumentError, "''"), ("  ", E.ArgumentError, "'  '"),
], ids=["None", "int", "bytes", "empty", "blank"])
def test_save_path_types(acts: Activations, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: Any, cls: type,
                         needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    expect(lambda: acts.save(path), cls, needle, folder=tmp_path)


def test_save_then_load_round_trips_and_leaves_one_file(acts: Activations, tmp_path: Path) -> None:
    out = acts.save(tmp_path / "a.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]
    back = Activations.load(out)
    assert back.positions == acts.positions and torch.equal(back.vectors[1], acts.vectors[1])


# -- load ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def good_file(tmp_path_factory: pytest.TempPathFactory, acts: Activations) -> tuple[dict[str, str], Path]:
    folder = tmp_path_factory.mktemp("good")
    return acts.metadata(), acts.save(folder / "good.safetensors")


def _write(path: Path, meta: dict[str, str], tensors: dict[str, torch.Tensor] | None = None) -> Path:
    from safetensors.torch import save_file

    save_file(tensors if tensors is not None else {"layer_1": torch.ones(2, D)}, str(path), metadata=meta)
    return path


MISSING_KEYS = ["layers", "positions", "token_ids", "tokens", "model_name", "n_layers", "d_model"]
BAD_VALUES = [
    ("layers", "[1", "'[1'"), ("layers", "1", "'1'"), ("layers", '["1"]', '\'["1"]\''), ("layers", "[true]", "[true]"),
    ("layers", "{}", "'{}'"), ("layers", "[5]", "layer_5"), ("layers", "[1, 2]", "layer_2"),
    ("positions", "[1, 2", "[1, 2"), ("positions", '["a"]', '["a"]'), ("positions", "[1.5, 2]", "1.5"),
    ("positions", "[1, 99]", "99"), ("positions", "[1]", "(2, 4)"), ("positions", "null", "'null'"),
    ("token_ids", "[5, 6", "[5, 6"), ("token_ids", '"abc"', "abc"), ("token_ids", "[5, 6.5, 7]", "6.5"),
    ("tokens", "[", "'['"), ("tokens", '"x"', '\'"x"\''), ("tokens", "[1, 2, 3]", "[1, 2, 3]"),
    ("tokens", '["a"]', "1 token strings"),
    ("n_layers", "abc", "'abc'"), ("n_layers", "3.5", "'3.5'"), ("n_layers", "0", "n_layers=0"),
    ("d_model", "", "''"), ("d_model", "four", "'four'"), ("d_model", "5", "(2, 4)"),
    ("kind", "delta", "'delta'"), ("meta", "[1]", "'[1]'"), ("meta", "{", "'{'"), ("meta", "7", "'7'"),
]


@pytest.mark.parametrize("key", MISSING_KEYS)
def test_load_missing_metadata(good_file: Any, tmp_path: Path, key: str) -> None:
    meta, _ = good_file
    path = _write(tmp_path / "x.safetensors", {k: v for k, v in meta.items() if k != key})
    expect(lambda: Activations.load(path), E.ActivationsFileError, (repr(key), "is missing"), folder=tmp_path)


@pytest.mark.parametrize("key, value, needle", BAD_VALUES, ids=[f"{k}={v}" for k, v, _ in BAD_VALUES])
def test_load_malformed_metadata(good_file: Any, tmp_path: Path, key: str, value: str, needle: str) -> None:
    meta, _ = good_file
    path = _write(tmp_path / "x.safetensors", {**meta, key: value})
    expect(lambda: Activations.load(path), E.ActivationsFileError, needle, folder=tmp_path)


def test_load_tensor_of_the_wrong_dtype(good_file: Any, tmp_path: Path) -> None:
    meta, _ = good_file
    path = _write(tmp_path / "x.safetensors", meta, {"layer_1": torch.ones(2, D, dtype=torch.int32)})
    expect(lambda: Activations.load(path), E.ActivationsFileError, "torch.int32", folder=tmp_path)


@pytest.mark.parametrize("fmt", [None, "", "activation_oracles.activations/0", "something/1"])
def test_load_foreign_safetensors(good_file: Any, tmp_path: Path, fmt: str | None) -> None:
    meta, _ = good_file
    meta = {k: v for k, v in meta.items() if k != "format"}
    if fmt is not None:
        meta["format"] = fmt
    path = _write(tmp_path / "x.safetensors", meta)
    expect(lambda: Activations.load(path), E.ActivationsMismatchError, f"format={fmt!r}", folder=tmp_path)


CONTENTS = [
    (b"\x80\x04\x95", E.UnsafeFileError, "pickle"), (b"PK\x03\x04rest", E.UnsafeFileError, "pickle"),
    (b"", E.UnsafeFileError, "not a readable safetensors"), (b"hello world, not a tensor file",
                                                             E.UnsafeFileError, "not a readable"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}", E.UnsafeFileError, "not a readable"),
    (b"\xff" * 64, E.UnsafeFileError, "not a readable"),
]


@pytest.mark.parametrize("content, cls, needle", CONTENTS, ids=["pickle", "zip", "empty", "text", "bad-header",
                                                                "noise"])
def test_load_files_that_are_not_activations(tmp_path: Path, content: bytes, cls: type, needle: str) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    expect(lambda: Activations.load(path), cls, (needle, str(path)), folder=tmp_path)


def test_load_truncated_file(good_file: Any, tmp_path: Path) -> None:
    _, good = good_file
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good.read_bytes()[:-7])
    expect(lambda: Activations.load(path), E.UnsafeFileError, str(path), folder=tmp_path)


def test_a_header_length_ending_in_0x80_is_not_mistaken_for_a_pickle(good_file: Any, tmp_path: Path) -> None:
    """safetensors starts with its header length: a length of 0x..80 used to read as a pickle's magic."""
    meta, _ = good_file
    for pad in range(256):
        path = _write(tmp_path / "x.safetensors", {**meta, "meta": json.dumps({"p": "x" * pad})})
        if path.read_bytes()[0] == 0x80:
            assert Activations.load(path).meta == {"p": "x" * pad}
            return
    pytest.fail("no padding gave a header length ending in 0x80")


@pytest.mark.parametrize("kind", ["missing", "directory", "None", "int", "bytes"])
def test_load_paths(tmp_path: Path, kind: str) -> None:
    cases = {"missing": (tmp_path / "nope.safetensors", E.InputFileNotFoundError, "does not exist"),
             "directory": (tmp_path, E.InputFileNotFoundError, "is a directory"),
             "None": (None, E.ArgumentTypeError, "None"), "int": (7, E.ArgumentTypeError, "int"),
             "bytes": (b"x", E.ArgumentTypeError, "bytes")}
    path, cls, needle = cases[kind]
    message = expect(lambda: Activations.load(path), cls, needle, folder=tmp_path)
    assert isinstance(path, Path) <= (str(path) in message)  # a path is named in full


# -- position specs --------------------------------------------------------------------------------------

N = 6
BAD_SPECS = [
    "last:7", "last:0", "last:-1", "last:", "last", "last:x", "last:1:2", "LAST:2", "first:1", "0:7", "-7:", "7:",
    ":7", ":-7", "3:3", "4:2", "-1:-3", "1:2:1", "::", "x:y", "1-3", "1,2", "", "  ", "al", "All", "content", "none",
    7, -7, 100, 1.0, 0.5, True, False, [0, 0], [1, 1, 2], [7], [-7], [0, 1.0], ["0"], [None], [[0]], [], (), range(0),
    {0}, {0: 1}, b"all", torch.tensor([0]), object(),
]


@pytest.mark.parametrize("spec", BAD_SPECS, ids=[f"{i}-{str(s)[:12]}" for i, s in enumerate(BAD_SPECS)])
def test_bad_position_specs(spec: Any) -> None:
    message = expect(lambda: parse_position_spec(spec, N), E.PositionError, ())
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    assert repr(spec)[:10] in message or any(str(p) in message for p in items), message
