"""The benchmark scripts run and print their ratios (figures themselves are not asserted: no timed tests)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO

pytestmark = pytest.mark.slow


def test_lm_throughput_benchmark_runs(lm_corpus, tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "lm_throughput.py"), "--steps", "6", "--warmup", "2",
         "--rounds", "1", "--output", str(tmp_path / "bench.json"), f"data.path={lm_corpus}",
         "data.batch_size=4", f"data.cache_dir={tmp_path / 'cache'}", "model.embedding_size=8",
         "model.hidden_size=8"],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "loop / bare throughput:" in out.stdout
    figures = json.loads((tmp_path / "bench.json").read_text())
    assert figures["throughput_ratio"] > 0 and len(figures["runs"]["loop"]) == 1
    assert figures["loop_peak_memory_bytes"] > 0 and figures["git_commit"]


def test_transfer_demo_trains_every_arm_per_seed_and_summarises(conll_corpus, tmp_path):
    import torch

    from nlprnn.data.vocab import WordVocab
    from nlprnn.hub import save_pretrained
    from nlprnn.models import build_model

    words = [line.split()[0] for line in (conll_corpus / "train.txt").read_text().splitlines()
             if line and not line.startswith("-DOCSTART-")]
    vocab = WordVocab.build([words + ["Zyzzyva", "Quokka"]], specials=("<unk>", "<eos>"))  # 2 words not in train
    torch.manual_seed(0)
    save_pretrained(build_model("lstm", vocab_size=len(vocab), embedding_size=12, hidden_size=8, num_layers=1),
                    tmp_path / "lm", vocab=vocab)
    summary = tmp_path / "transfer.json"
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "transfer_demo.py"), "--lm", str(tmp_path / "lm"),
         "--config", str(REPO / "recipes" / "configs" / "ner" / "tiny.yaml"), "--seeds", "1", "2", "--minutes", "5",
         "--threads", "1", "--out", str(tmp_path / "demo"), "--json", str(summary),
         "--set", f"data.path={conll_corpus}", "train.max_steps=6", "train.eval_every=3", "model.hidden_size=8",
         "run.tracker=none", "--pretrained-set", "transfer.pretrained_lr_scale=0.5", "--add-source-words"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    result = json.loads(summary.read_text())
    arms = ["random", "pretrained", "pretrained_words"]
    assert [row["arm"] for row in result["rows"]] == arms
    for arm in arms:
        records = [json.loads((tmp_path / "demo" / f"{arm}-seed{s}" / "result.json").read_text()) for s in (1, 2)]
        assert [r["seed"] for r in records] == [1, 2]
        assert all(r["config"]["model"]["embedding_size"] == 12 for r in records)  # the LM's vector size
        assert result["runs"][arm]["test_f1"] == [r["metrics"]["test_f1"] for r in records]
        assert ("transfer" in records[0]) == (arm != "random")
        assert records[0]["config"]["transfer"]["add_source_words"] == (arm == "pretrained_words")
    coverage = result["coverage"]
    assert coverage["exact"] > 0 and coverage["exact"] + coverage["lowercase"] + coverage["missing"] == coverage["total"]
    assert result["lm_model"] == "lstm"
    for arm in arms[1:]:
        gain = result["runs"][arm]["test_f1_mean"] - result["runs"]["random"]["test_f1_mean"]
        assert result["gains_test_f1"][arm] == gain
        assert f"{arm} vs random: test F1 {gain:+.2f}" in out.stdout
    assert result["gain_test_f1"] == result["gains_test_f1"]["pretrained"]
    assert result["source_words_added"] == 2
