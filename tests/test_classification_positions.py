"""Classification reads the text's own tokens: never a special or chat-template token, for every task."""

from __future__ import annotations

from random import Random

import pytest

from activation_oracles.training.classification import DEFAULT_TASKS, Classification, encode_with_span


@pytest.mark.parametrize("fmt", ["plain", "chat"])
def test_every_task_reads_content_tokens(data_dir, embedded_tokenizer, fmt):
    special = set(embedded_tokenizer.all_special_ids)
    newline = embedded_tokenizer.convert_tokens_to_ids("Ċ")
    for name, task in sorted(DEFAULT_TASKS.items()):
        split = "held_out" if task.held_out else "train"
        b = Classification(data_dir / "classification", tasks=[name], split=split, context_format=fmt,
                           max_context_tokens=128)
        it = b.examples(embedded_tokenizer, Random(0))
        for _ in range(12):
            e = next(it)
            ids, (start, stop) = encode_with_span(embedded_tokenizer, e.meta["text"], fmt)
            assert ids == e.context_ids
            assert all(start <= p < stop for p in e.positions), (name, e.positions, (start, stop))
            read = {e.context_ids[p] for p in e.positions}
            assert not read & special and newline not in read, name
            if len(e.positions) == 1:
                assert e.positions[0] == stop - 1  # the text's last token, where a probe finds the feature
            if fmt == "chat":
                assert "SmolLM" not in embedded_tokenizer.decode(list(e.context_ids))


def test_end_offsets_stay_inside_the_text(embedded_tokenizer):
    ids, (start, stop) = encode_with_span(embedded_tokenizer, "Short one.", "chat")
    b = Classification.__new__(Classification)
    b.end_offsets, b.single_fraction, b.window_sizes = (1, 40), 1.0, (1, 1)
    for seed in range(30):
        (p,) = b._positions((start, stop), Random(seed))
        assert start <= p < stop
