"""benchmarks/lightrnn_speed.py runs at tiny sizes and its JSON agrees with really built models.

Timings are not asserted (no timed tests): only that every run produced some, and that the printed ratios are
the ratios of the reported figures.
"""

import json
import subprocess
import sys

import pytest
from conftest import REPO

from nlprnn.models import build_model

pytestmark = pytest.mark.slow

VOCABS, SIZE = (50, 100), 8


def counts(name, vocab, **values):
    return build_model(name, vocab_size=vocab, embedding_size=SIZE, hidden_size=SIZE, num_layers=2,
                       **values).param_counts()


def test_lightrnn_speed_benchmark_figures(tmp_path):
    path = tmp_path / "speed.json"
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "lightrnn_speed.py"), "--vocab-sizes", *map(str, VOCABS),
         "--sizes", str(SIZE), "--steps", "2", "--warmup", "1", "--batch-size", "2", "--bptt", "3",
         "--threads", "1", "--json", str(path)],
        capture_output=True, text=True, timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Light RNN tokens/s vs full" in out.stdout and "80x fewer" in out.stdout
    figures = json.loads(path.read_text())
    assert figures["failures"] == [] and figures["hardware"]["cpu_count"] > 0
    assert figures["torch"] and figures["date"] and "--json" in figures["argv"]

    # Parameter table: the meta-device LSTM counts equal real builds, and the ratios are theirs.
    assert [(row["vocab"], row["size"]) for row in figures["params"]] == [(v, SIZE) for v in VOCABS]
    for row in figures["params"]:
        vocab = row["vocab"]
        assert row["lightrnn"] == counts("lightrnn", vocab)
        assert row["lstm"] == counts("lstm", vocab, tie_weights=False)
        assert row["lstm_tied"] == counts("lstm", vocab, tie_weights=True)
        assert row["lstm_tied"]["embedding_softmax"] < row["lstm"]["embedding_softmax"]
        for key in ("lstm", "lstm_tied"):
            for part in ("embedding_softmax", "total"):
                assert row[f"{key}_{part}_ratio"] == pytest.approx(row[key][part] / row["lightrnn"][part])

    # Speed table: every model ran at every V, on the model the parameter table describes.
    assert [row["vocab"] for row in figures["speed"]] == list(VOCABS)
    for row in figures["speed"]:
        runs = row["runs"]
        assert set(runs) == {"lightrnn", "lstm", "adaptive"}
        for run in runs.values():
            assert run["tokens_per_second"] > 0 and run["peak_rss_bytes"] >= run["import_rss_bytes"] > 0
            assert run["vocab"] == row["vocab"] and run["size"] == SIZE and run["threads"] == 1
        assert runs["lightrnn"]["param_counts"] == counts("lightrnn", row["vocab"])
        assert runs["lstm"]["param_counts"] == counts("lstm", row["vocab"])
        assert runs["adaptive"]["param_counts"] == counts("lstm", row["vocab"], head="adaptive")
        light = runs["lightrnn"]["tokens_per_second"]
        assert row["speedup_vs_lstm"] == pytest.approx(light / runs["lstm"]["tokens_per_second"])
        assert row["speedup_vs_adaptive"] == pytest.approx(light / runs["adaptive"]["tokens_per_second"])
        assert row["memory_ratio_lstm_vs_lightrnn"] == pytest.approx(
            runs["lstm"]["peak_rss_bytes"] / runs["lightrnn"]["peak_rss_bytes"])
    assert figures["target"] is None  # V = 33k, E = H = 200 was not measured
