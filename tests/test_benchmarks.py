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
