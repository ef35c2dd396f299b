"""Dataset builders, text sources and the mixture (activation_oracles.training).

Checks independent truths about the records: positions inside the context,
the context cut before what must be predicted, balanced labels, instruction
turns that never reach the oracle, determinism, disjoint DDP shards, and a
typed error per bad input. Real data comes from ../shared/data (or
$AO_SHARED_DATA); tests that need it are skipped when it is absent.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from random import Random

import pytest

from activation_oracles.errors import ConfigError, DataError, OfflineError
from activation_oracles.training.classification import Classification, ClassificationTask, DEFAULT_TASKS
from activation_oracles.training.context_prediction import ContextPrediction
from activation_oracles.training.mixture import Mixture
from activation_oracles.training.on_policy import OnPolicySource, load_prompts
from activation_oracles.training.sources import (ChatSource, CsvColumnSource, HFDatasetSource, JsonlSource,
                                                 PlainTextSource, TextListSource)
from activation_oracles.training.system_prompt_qa import SystemPromptQA


def _shared_data() -> Path | None:
    env = os.environ.get("AO_SHARED_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return path if path.is_dir() else None


SHARED = _shared_data()
needs_shared = pytest.mark.skipif(SHARED is None, reason="../shared/data (or $AO_SHARED_DATA) is not present")


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from activation_oracles.embedded import embedded_dir

    t = AutoTokenizer.from_pretrained(str(embedded_dir()), local_files_only=True)
    if t.pad_token is None:
        t.pad_token = t.eos_token
    return t


TEXTS = [f"Document {i}: " + " ".join(f"word{(i * 7 + j) % 97} and thing{j}" for j in range(10 + 6 * i))
         for i in range(12)]


def take(it, n):
    return [next(it) for _ in range(n)]


def dicts(examples):
    return [e.to_dict() for e in examples]


# --------------------------------------------------------------------------- context prediction

def test_context_prediction_positions_cut_and_answers(tok):
    docs = [tok(t)["input_ids"] for t in TEXTS]
    cp = ContextPrediction(TextListSource(TEXTS), shuffle_buffer=4)
    exs = take(cp.examples(tok, Random(0)), 300)
    directions = Counter()
    for ex in exs:
        ctx, pos = list(ex.context_ids), list(ex.positions)
        assert pos == list(range(pos[0], pos[0] + len(pos))) and 1 <= len(pos) <= 50
        assert 0 <= pos[0] and pos[-1] == len(ctx) - 1, "context must end at the last activation position"
        doc = next(d for d in docs if d[:len(ctx)] == ctx)
        j = ex.meta["n_tokens"]
        assert 1 <= j <= 20 and f" {j} tokens " in ex.question
        answer_ids = ex.meta["answer_ids"]
        if ex.meta["direction"] == "next":
            assert ex.question.startswith("Can you predict the next")
            assert doc[len(ctx):len(ctx) + j] == answer_ids  # the predicted tokens come after the context ...
            assert len(ctx) + j <= len(doc)  # ... and none of them is in it
        else:
            assert ex.question.startswith("Can you predict the previous")
            assert ctx[pos[0] - j:pos[0]] == answer_ids and pos[0] >= j
        assert ex.answer == tok.decode(answer_ids, skip_special_tokens=True)
        assert ex.layer_percent in (25.0, 50.0, 75.0)
        directions[ex.meta["direction"]] += 1
    assert min(directions.values()) > 100
    assert max(len(e.positions) for e in exs) > 10

    single = take(ContextPrediction.single_token(TextListSource(TEXTS)).examples(tok, Random(1)), 100)
    assert all(len(e.positions) == 1 for e in single)
    assert all(e.source == "context_prediction_single" for e in single)


def test_context_prediction_truncates_skips_and_errors(tok):
    cp = ContextPrediction(TextListSource(TEXTS), max_context_tokens=40)
    assert all(len(e.context_ids) <= 40 for e in take(cp.examples(tok, Random(0)), 100))
    mixed = ContextPrediction(TextListSource(["Hi.", TEXTS[5]]), n_positions=(5, 5), n_tokens=(3, 3))
    assert all(len(e.context_ids) > 3 for e in take(mixed.examples(tok, Random(0)), 20))
    with pytest.raises(DataError, match="shorter than"):
        next(ContextPrediction(TextListSource(["Hi.", "Yes."]), n_positions=(5, 5)).examples(tok, Random(0)))
    with pytest.raises(DataError):
        TextListSource([])
    finite = ContextPrediction(TextListSource(TEXTS), repeat=False)
    assert len(list(finite.examples(tok, Random(0)))) == len(TEXTS)
    for bad in ({"n_positions": (0, 3)}, {"n_tokens": (5, 2)}, {"directions": ("sideways",)},
                {"layer_percents": (50, 100)}, {"layer_percents": ()}):
        with pytest.raises(ConfigError):
            ContextPrediction(TextListSource(TEXTS), **bad)


# --------------------------------------------------------------------------- text sources

def test_text_sources_read_files(tok, tmp_path):
    (tmp_path / "a.txt").write_text("First paragraph\ncontinues here.\n\nSecond one.\n\n\n")
    assert list(PlainTextSource(tmp_path / "a.txt").texts()) == ["First paragraph continues here.", "Second one."]
    assert len(list(PlainTextSource(tmp_path / "a.txt", split="line").texts())) == 3
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "Owls hunt."}) + "\n\n"
                                      + json.dumps({"text": [{"role": "user", "content": "Hi"}]}) + "\n")
    docs = list(JsonlSource(tmp_path / "b.jsonl").documents(tok))
    assert docs[0] == tok("Owls hunt.")["input_ids"]
    assert docs[1][0] == tok.convert_tokens_to_ids("<|im_start|>")  # a dialogue is chat-templated
    (tmp_path / "c.csv").write_text("id,body\n1,Some text here\n2,More text\n")
    assert len(list(CsvColumnSource(tmp_path / "c.csv", "body").documents(tok))) == 2
    chats = [{"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there"}]}]
    (tmp_path / "d.json").write_text(json.dumps(chats))
    (doc,) = ChatSource(tmp_path / "d.json").documents(tok)
    assert "Hi there" in tok.decode(doc) and "<|im_start|>assistant" in tok.decode(doc)


def test_text_source_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        PlainTextSource(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match="empty"):
        PlainTextSource(tmp_path / "empty.txt")
    (tmp_path / "c.csv").write_text("id,body\n1,x\n")
    with pytest.raises(DataError, match=r"\['id', 'body'\]"):
        CsvColumnSource(tmp_path / "c.csv", "text")
    (tmp_path / "b.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match="no field 'text'"):
        list(JsonlSource(tmp_path / "b.jsonl").records())


def test_hf_dataset_offline_fails_fast(tok, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(OfflineError, match="JsonlSource"):
        next(HFDatasetSource("HuggingFaceFW/fineweb").documents(tok))
    assert time.perf_counter() - t0 < 2.0


# --------------------------------------------------------------------------- classification

@needs_shared
def test_classification_positions_and_balance(tok):
    cls = Classification(SHARED / "classification")
    exs = take(cls.examples(tok, Random(0)), 600)
    yes = sum(e.answer == "Yes" for e in exs) / len(exs)
    assert 0.44 < yes < 0.56
    singles = 0
    for ex in exs:
        n, pos = len(ex.context_ids), list(ex.positions)
        assert ex.answer in ("Yes", "No") and ex.question.startswith("Answer with 'Yes' or 'No' only.")
        assert pos == list(range(pos[0], pos[-1] + 1)) and 0 <= pos[0] and 1 <= len(pos) <= 50
        assert n - 5 <= pos[-1] <= n - 1, "inputs end 1-5 tokens before the end of the context"
        assert ex.context_ids == tuple(tok(ex.meta["text"])["input_ids"])  # plain text, as the target sees it
        singles += len(pos) == 1
        assert not ex.meta["held_out_task"]
    assert 0.58 < singles / len(exs) < 0.75  # 2/3 single-token (a few windows have width 1 too)
    assert {e.meta["group"] for e in exs} == {"geometry_of_truth", "relations", "tense"}
    for task in ("headline_istrump", "singular_plural", "tense", "gmt/cities"):  # label flipping and truth tasks
        split = "held_out" if DEFAULT_TASKS[task].held_out else "train"
        one = take(Classification(SHARED / "classification", tasks=[task], split=split).examples(tok, Random(3)),
                   300)
        yes = sum(e.answer == "Yes" for e in one) / len(one)
        assert 0.4 < yes < 0.6, (task, yes)
        if DEFAULT_TASKS[task].mode == "label":
            assert all((e.answer == "Yes") == (e.meta["asked"] == e.meta["label"]) for e in one)


@needs_shared
def test_classification_splits(tok):
    data = SHARED / "classification"
    train = take(Classification(data, tasks=["gmt/cities", "tense"]).examples(tok, Random(0)), 400)
    test = take(Classification(data, tasks=["gmt/cities", "tense"], split="test").examples(tok, Random(0)), 400)
    assert not {e.meta["text"] for e in train} & {e.meta["text"] for e in test}
    held = take(Classification(data, split="held_out").examples(tok, Random(0)), 300)
    assert all(e.meta["held_out_task"] for e in held)
    assert {"singular_plural", "headline_istrump"} <= {e.meta["task"] for e in held}
    chat = next(Classification(data, tasks=["gmt/cities"], context_format="chat").examples(tok, Random(0)))
    assert chat.context_ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
    moved = Classification(data, tasks=["singular_plural"], held_out=[])  # config can un-hold a task
    assert next(moved.examples(tok, Random(0))).meta["task"] == "singular_plural"


def test_classification_bad_inputs(tok, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Classification(tmp_path, tasks=[ClassificationTask("t", "missing.csv")])
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        Classification(tmp_path, tasks=[ClassificationTask("t", "empty.csv")])
    (tmp_path / "t.csv").write_text("sentence,truth\nOwls fly.,1\nFish fly.,0\n")
    with pytest.raises(DataError, match=r"\['sentence', 'truth'\]"):
        Classification(tmp_path, tasks=[ClassificationTask("t", "t.csv", text_column="sentence")])
    ok = ClassificationTask("t", "t.csv", text_column="sentence", label_column="truth",
                            labels={"1": "true", "0": "false"})
    assert next(Classification(tmp_path, tasks=[ok]).examples(tok, Random(0))).answer in ("Yes", "No")
    with pytest.raises(DataError, match="label mapping"):
        Classification(tmp_path, tasks=[ClassificationTask("t", "t.csv", text_column="sentence",
                                                           label_column="truth", labels={"1": "true"})])
    with pytest.raises(DataError, match="longer than max_context_tokens"):
        next(Classification(tmp_path, tasks=[ok], max_context_tokens=1, test_fraction=0.01).examples(tok, Random(0)))
    with pytest.raises(ConfigError, match="unknown classification task"):
        Classification(tmp_path, tasks=["no_such_task"])
    with pytest.raises(ConfigError, match="held-out"):
        Classification(tmp_path, tasks=["singular_plural"], split="train")
    with pytest.raises(ConfigError):
        Classification(tmp_path, tasks=[ok], split="validation")


# --------------------------------------------------------------------------- system-prompt QA

@needs_shared
def test_system_prompt_qa_masks_instruction(tok):
    lqa = SHARED / "latentqa" / "eval"
    system, stimulus = json.loads((lqa / "system.json").read_text()), json.loads((lqa / "stimulus.json").read_text())
    instruction = {r["label"]: r["system"] for r in system}
    assert all(instruction[r["label"]] == r["control_user"] for r in stimulus)
    qa = SystemPromptQA(lqa / "qa.json", [lqa / "system.json", lqa / "stimulus.json"])
    exs = take(qa.examples(tok, Random(0)), 300)
    kinds = Counter()
    for ex in exs:
        text, first = instruction[ex.meta["label"]], min(ex.positions)
        n = len(ex.context_ids)
        assert text in tok.decode(ex.context_ids[:first]), "the target sees the instruction, before every position"
        assert text[:20] not in tok.decode(ex.context_ids[first:]), "no position reads the instruction"
        assert text not in ex.question and text not in ex.answer
        assert 0 <= first and max(ex.positions) < n
        if ex.positions == tuple(range(ex.meta["n_masked"], n)) and len(ex.positions) > 3:
            kinds["all"] += 1
        else:
            assert 1 <= len(ex.positions) <= 3 and n - 10 <= max(ex.positions) <= n - 1
            kinds["window"] += 1
        assert [ex.question, ex.answer] in [list(p) for p in qa.qa[ex.meta["label"]]]
    assert 100 < kinds["all"] < 200 and Counter(e.meta["format"] for e in exs).keys() == {"system", "stimulus"}
    test = SystemPromptQA(lqa / "qa.json", [lqa / "system.json"], split="test")
    assert not set(qa.labels) & set(test.labels) and len(test.labels) > 50


def test_system_prompt_qa_bad_inputs(tok, tmp_path):
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps({"persona-a": [["Who?", "A pirate."]], "persona-b": [["Who?", "A cat."]]}))
    good = tmp_path / "system.json"
    good.write_text(json.dumps([{"system": "Talk like a pirate.", "stimulus_user": "Hello!", "label": "persona-a"},
                                {"system": "You are a cat.", "stimulus_user": "Hi!", "label": "persona-b"}]))
    both = SystemPromptQA(qa, [good], split="train", test_fraction=0.01)
    ex = next(both.examples(tok, Random(0)))
    assert ex.answer in ("A pirate.", "A cat.") and "<|im_start|>user" in tok.decode(ex.context_ids[min(ex.positions):])
    with pytest.raises(DataError, match="does not exist"):
        SystemPromptQA(tmp_path / "nope.json", [good])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"prompt": "x", "label": "persona-a"}]))
    with pytest.raises(DataError, match="unrecognised"):
        SystemPromptQA(qa, [bad])
    bad.write_text(json.dumps([{"system": "Be terse.", "stimulus_user": "Hi"}]))
    with pytest.raises(DataError, match="no 'label'"):
        SystemPromptQA(qa, [bad])
    with pytest.raises(DataError, match="longer than max_context_tokens"):
        next(SystemPromptQA(qa, [good], test_fraction=0.01, max_context_tokens=5).examples(tok, Random(0)))


# --------------------------------------------------------------------------- determinism, mixture, sharding

@pytest.fixture(scope="module")
def builders():
    shared = SHARED
    out = [ContextPrediction.multi_token(TextListSource(TEXTS)), ContextPrediction.single_token(TextListSource(TEXTS))]
    if shared is not None:
        out.append(Classification(shared / "classification", tasks=["gmt/cities", "tense", "relations/adj_antonym"]))
        out.append(SystemPromptQA(shared / "latentqa/eval/qa.json", [shared / "latentqa/eval/system.json"]))
    return out


def test_builders_are_deterministic(tok, builders):
    for b in builders:
        a1, a2 = take(b.examples(tok, Random(5)), 40), take(b.examples(tok, Random(5)), 40)
        other = take(b.examples(tok, Random(6)), 40)
        assert dicts(a1) == dicts(a2), b.name
        assert dicts(a1) != dicts(other), b.name


def test_mixture_weights_sharding_and_resume(tok, builders):
    weights = {b.name: w for b, w in zip(builders, [3, 1, 2, 1])}
    full = take(Mixture(builders, weights, seed=1).examples(tok), 240)
    assert dicts(full) == dicts(take(Mixture(builders, weights, seed=1).examples(tok), 240))
    assert dicts(full) != dicts(take(Mixture(builders, weights, seed=2).examples(tok), 240))
    shards = []
    for rank in range(3):
        mix = Mixture(builders, weights, seed=1, rank=rank, world_size=3)
        shards.append(take(mix.examples(tok), 80))
        assert mix.summary()["n_examples"] == 80 and mix.summary()["world_size"] == 3
        assert dicts(shards[rank]) == dicts(full[rank::3])  # each rank: its own disjoint slice of the stream
    assert sorted(map(json.dumps, sum(map(dicts, shards), []))) == sorted(map(json.dumps, dicts(full)))
    resumed = take(Mixture(builders, weights, seed=1).examples(tok, start=100), 140)
    assert dicts(resumed) == dicts(full[100:])
    mix = Mixture(builders, weights, seed=1)
    take(mix.examples(tok), 600)
    summary = mix.summary()
    counts = {n: e["count"] for n, e in summary["builders"].items()}
    share = counts[builders[0].name] / 600
    expected = 3 / sum(weights.values())
    assert abs(share - expected) < 0.07 and sum(summary["sources"].values()) == 600
    json.dumps(summary)  # the summary goes into oracle_config.json


def test_mixture_exhaustion_and_bad_config(tok):
    finite = ContextPrediction(TextListSource(TEXTS[:3]), repeat=False, name="finite")
    endless = ContextPrediction.single_token(TextListSource(TEXTS))
    mix = Mixture([finite, endless], {"finite": 10, endless.name: 1})
    exs = take(mix.examples(tok), 50)
    assert sum(e.source == "finite" for e in exs) == 3 and mix.summary()["builders"]["finite"]["exhausted"]
    assert len(list(Mixture([finite]).examples(tok))) == 3
    with pytest.raises(ConfigError, match="unknown builders"):
        Mixture([finite, endless], {"finite": 1, "other": 1})
    with pytest.raises(ConfigError, match="more than once"):
        Mixture([finite, finite])
    for bad in ([-1, 1], [0, 0], [float("nan"), 1]):
        with pytest.raises(ConfigError):
            Mixture([finite, endless], bad)
    with pytest.raises(ConfigError, match="rank"):
        Mixture([finite], rank=2, world_size=2)


# --------------------------------------------------------------------------- on-policy rollouts

@pytest.fixture
def one_thread():
    """Tiny-model generation is dominated by thread hand-offs on a busy 2-core machine; one thread is faster."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_on_policy_rollouts_are_a_seeded_text_source(tok, tmp_path, one_thread):
    from activation_oracles.tiny import tiny_model

    assert len(load_prompts()) >= 100
    target = tiny_model(n_layers=2, d_model=32, tokenizer=tok)
    kw = {"prompts": ["Tell me about owls.", "Why is the sky blue?"], "n_rollouts": 2, "max_new_tokens": 4,
          "batch_size": 2}
    src = OnPolicySource(target, seed=0, **kw)
    docs = list(src.documents(tok))
    assert docs == list(OnPolicySource(target, seed=0, **kw).documents(tok))
    assert docs != list(OnPolicySource(target, seed=1, **kw).documents(tok))
    for doc, r in zip(docs, src.rollouts()):  # the prompt through the chat template, then 1-4 generated tokens
        # (an explicit empty system turn: never the template's default system prompt)
        prompt = tok.apply_chat_template([{"role": "system", "content": ""}, {"role": "user", "content": r["prompt"]}],
                                         tokenize=False, add_generation_prompt=True)
        prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
        assert doc[:len(prompt_ids)] == prompt_ids and 1 <= len(doc) - len(prompt_ids) <= 4
    ex = next(ContextPrediction(src, n_tokens=(1, 3)).examples(tok, Random(0)))
    assert any(list(ex.context_ids) == d[:len(ex.context_ids)] for d in docs)
    assert len(list(ChatSource(src.save_jsonl(tmp_path / "rollouts.jsonl")).dialogues())) == 2
    with pytest.raises(ConfigError):
        OnPolicySource(target, n_rollouts=0)
