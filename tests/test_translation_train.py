"""The translation recipe end to end: record, checkpoint with tokenizers, translate CLI, resume, 2 processes."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO, tiny_mt_overrides
from test_resume_distributed import final_weights, launch

from nlprnn.hub import from_pretrained, load_tokenizers

pytestmark = pytest.mark.slow


def test_tiny_run_writes_a_translation_record_and_a_usable_model(mt_corpus, tmp_path, capsys,
                                                                   fresh_accelerate_state):
    from nlprnn.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", "--task", "mt", *tiny_mt_overrides(mt_corpus, run_dir)]) == 0
    record = json.loads((run_dir / "result.json").read_text())
    assert record["task"] == "mt" and record["model"] == "gru_attn"
    metrics = record["metrics"]
    assert {"valid_bleu", "test_bleu", "test_chrf", "bleu_signature"} <= set(metrics)
    assert metrics["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    for kind, beam in (("greedy", 1), ("beam", 3)):
        assert record["decode"][kind]["beam_size"] == beam and record["decode"][kind]["sentences_per_second"] > 0
    assert record["data"]["train_pairs"] == 400 and record["data"]["skipped_long"] == 0
    translations = (run_dir / "test_translations.txt").read_text(encoding="utf-8").splitlines()
    assert len(translations) == 30

    model, _ = from_pretrained(run_dir / "model")
    tokenizers = load_tokenizers(run_dir / "model")
    assert tokenizers["src"] is not None and tokenizers["src"].fingerprint() == tokenizers["tgt"].fingerprint()
    assert (run_dir / "model" / "spm.model").exists()
    source = mt_corpus / "test2016.de"
    capsys.readouterr()
    assert main(["translate", "--model", str(run_dir / "model"), "--input", str(source), "--beam", "3",
                 "--quiet", "--batch-size", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == translations  # the recipe's beam outputs, in order
    assert main(["translate", "--model", str(run_dir / "model"), "--input", str(source), "--beam", "3",
                 "--n-best", "2", "--quiet"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 60

    out = subprocess.run([sys.executable, str(REPO / "benchmarks" / "decode_speed.py"), "--model",
                          str(run_dir / "model"), "--input", str(source), "--beams", "1", "5", "--single", "3",
                          "--batch-size", "8", "--threads", "1", "--json", str(tmp_path / "speed.json")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = json.loads((tmp_path / "speed.json").read_text())["rows"]
    assert [r["beam_size"] for r in rows] == [1, 5] and all(r["single_sentences_per_second"] > 0 for r in rows)
    assert rows[0]["batched_time_vs_greedy"] == 1.0
    assert rows[1]["batched_time_vs_greedy"] == pytest.approx(
        rows[0]["batched_sentences_per_second"] / rows[1]["batched_sentences_per_second"])
    assert "batched beam 5 takes" in out.stdout


def test_killed_run_resumes_bitwise(mt_corpus, tmp_path):
    settings = {"model.dropout": 0.2, "train.epochs": 3, "train.checkpoint_every": 7, "train.eval_every": 10,
                "data.valid_subset": 10}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch(tiny_mt_overrides(mt_corpus, straight, **settings), recipe="translate.py")
    killed = launch(tiny_mt_overrides(mt_corpus, resumed, **settings), env={"NLPRNN_KILL_AFTER_STEP": "16"},
                    check=False, recipe="translate.py")
    assert killed.returncode == 137
    out = launch(tiny_mt_overrides(mt_corpus, resumed, **settings), recipe="translate.py")
    assert "resumed from" in out.stdout + out.stderr
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((straight / "result.json").read_text())
    rb = json.loads((resumed / "result.json").read_text())
    assert ra["metrics"] == rb["metrics"]


def test_two_processes_equal_one(mt_corpus, tmp_path):
    settings = {"train.max_steps": 6, "train.eval_every": 3, "data.valid_subset": 10}
    one, two = tmp_path / "one", tmp_path / "two"
    launch(tiny_mt_overrides(mt_corpus, one, **settings), recipe="translate.py")
    launch(tiny_mt_overrides(mt_corpus, two, **settings), processes=2, recipe="translate.py")
    a, b = final_weights(one), final_weights(two)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    ra = json.loads((one / "result.json").read_text())
    rb = json.loads((two / "result.json").read_text())
    assert rb["hardware"]["num_processes"] == 2
    assert rb["metrics"]["valid_loss"] == pytest.approx(ra["metrics"]["valid_loss"], rel=1e-5)
    assert rb["metrics"]["test_bleu"] == pytest.approx(ra["metrics"]["test_bleu"], abs=1e-6)
