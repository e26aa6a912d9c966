"""The NER recipe end to end: a tiny corpus is learnt, the record has seqeval F1 per type, resume, 2 processes."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_ner_overrides
from test_resume_distributed import final_weights, launch

from nlprnn.train.tagging import entity_scores

pytestmark = pytest.mark.slow


def test_entity_scores_by_hand():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "I-LOC"], ["O", "O"]]
    scores = entity_scores(gold, predicted)
    # conlleval reads the lone I-LOC as an entity: 2 of 2 predicted are right, 2 of 3 gold are found.
    assert scores["precision"] == pytest.approx(100.0) and scores["recall"] == pytest.approx(200 / 3)
    assert scores["f1"] == pytest.approx(80.0)
    # strict IOB2 does not accept I-LOC as an entity start: 1 of 1 predicted, 1 of 3 gold.
    assert scores["strict_f1"] == pytest.approx(50.0)
    assert scores["per_type"]["ORG"]["recall"] == 0.0 and scores["per_type"]["PER"]["f1"] == 100.0


def test_tiny_run_learns_the_entities(conll_corpus, tmp_path, capsys):
    from nlprnn.cli import main

    run_dir = tmp_path / "run"
    launch(tiny_ner_overrides(conll_corpus, run_dir, **{"train.epochs": 4}), recipe="ner.py")
    record = json.loads((run_dir / "result.json").read_text())
    assert record["task"] == "ner" and record["model"] == "birnn_tagger"
    assert record["metrics"]["test_f1"] > 90 and set(record["metrics"]["per_type"]) == {"LOC", "PER"}
    assert record["data"]["tags"][0] == "O" and "S-PER" in record["data"]["tags"]
    assert record["decode"]["sentences_per_second"] > 0

    (tmp_path / "in.txt").write_text("Maria visited New York 1999 .\nLi Wei left Paris Bonn .\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["tag", "--model", str(run_dir / "model"), "--input", str(tmp_path / "in.txt")]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert lines[:7] == ["Maria\tB-PER", "visited\tO", "New\tB-LOC", "York\tI-LOC", "1999\tO", ".\tO", ""]
    assert main(["tag", "--model", str(run_dir / "model"), "--input", str(conll_corpus / "test.txt"),
                 "--format", "conll", "--scheme", "iob1"]) == 0
    tagged = [line.split("\t") for line in capsys.readouterr().out.splitlines() if line]
    gold = [line.split() for line in (conll_corpus / "test.txt").read_text().splitlines()[2:] if line]
    agree = sum(t[1] == g[3] for t, g in zip(tagged, gold))
    assert len(tagged) == len(gold) and agree / len(gold) > 0.9


def test_tagger_speed_benchmark_runs(conll_corpus, tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "tagger_speed.py"), "--data", str(conll_corpus),
                          "--steps", "3", "--warmup", "1", "--threads", "1", "--json", str(tmp_path / "speed.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert [r["head"] for r in rows] == ["softmax", "crf"]
    assert all(r["train_sentences_per_second"] > 0 and r["decode_sentences_per_second"] > 0 for r in rows)
    assert "CRF / softmax" in out.stdout


def test_killed_run_resumes_bitwise(conll_corpus, tmp_path):
    settings = {"model.dropout": 0.3, "data.unk_replace": 0.5, "data.digits_to_zero": False,
                "train.checkpoint_every": 7, "train.eval_every": 10}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch(tiny_ner_overrides(conll_corpus, straight, **settings), recipe="ner.py")
    killed = launch(tiny_ner_overrides(conll_corpus, resumed, **settings), env={"NLPRNN_KILL_AFTER_STEP": "16"},
                    check=False, recipe="ner.py")
    assert killed.returncode == 137
    launch(tiny_ner_overrides(conll_corpus, resumed, **settings), recipe="ner.py")
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_processes_equal_one(conll_corpus, tmp_path):
    settings = {"train.max_steps": 6, "train.eval_every": 3, "data.unk_replace": 0.5,
                "data.digits_to_zero": False}
    one, two = tmp_path / "one", tmp_path / "two"
    launch(tiny_ner_overrides(conll_corpus, one, **settings), recipe="ner.py")
    launch(tiny_ner_overrides(conll_corpus, two, **settings), processes=2, recipe="ner.py")
    a, b = final_weights(one), final_weights(two)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    ra = json.loads((one / "result.json").read_text())["metrics"]
    rb = json.loads((two / "result.json").read_text())["metrics"]
    assert rb["valid_f1"] == pytest.approx(ra["valid_f1"], abs=1e-6)


def _tagging(corpus, tmp_path, **extra):
    from types import SimpleNamespace

    from nlprnn.config import load_config
    from nlprnn.train.tagging import Tagging

    cfg = load_config(None, tiny_ner_overrides(corpus, tmp_path / "run", **extra))
    return Tagging(cfg, SimpleNamespace(num_processes=1, process_index=0, device="cpu"))


def test_unk_replace_reads_only_once_seen_words_as_unk(tmp_path):
    from nlprnn.errors import NlprnnError

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    # Every sentence: "the <name seen once> sat": only the names are singletons.
    names = [f"N{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(400)]
    train = "".join(f"the O\n{name} I-PER\nsat O\n\n" for name in names)
    for split, text in (("train", train), ("valid", "the O\nsat O\n"), ("test", "the O\nsat O\n")):
        (corpus / f"{split}.txt").write_text(text, encoding="utf-8")
    task = _tagging(corpus, tmp_path, **{"data.unk_replace": 0.5})
    unk, the, sat = task.words["<unk>"], task.words["the"], task.words["sat"]
    assert task.data_record()["singletons"] == 400

    first = [task._training_example(i, epoch=0) for i in range(400)]
    assert all(words[0] == the and words[2] == sat for words, _, _ in first)
    replaced = {i for i, (words, _, _) in enumerate(first) if words[1] == unk}
    assert 150 < len(replaced) < 250  # about half of 400
    assert all(chars == task.encoded["train"][i][1] for i, (_, chars, _) in enumerate(first))  # spelling kept
    # The same draws on a second pass (resume) and other draws in the next epoch.
    assert [task._training_example(i, epoch=0) for i in range(400)] == first
    again = {i for i in range(400) if task._training_example(i, epoch=1)[0][1] == unk}
    assert again != replaced and 150 < len(again) < 250

    plain = _tagging(corpus, tmp_path)
    assert all(plain._training_example(i, 0)[0] == plain.encoded["train"][i][0] for i in range(400))
    with pytest.raises(NlprnnError, match="data.unk_replace"):
        _tagging(corpus, tmp_path, **{"data.unk_replace": 1.5})
