"""Subprocess runs of the recipe: a hard kill then resume is exact, and 2 gloo processes equal 1."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_lm_overrides
from safetensors.torch import load_file

pytestmark = pytest.mark.slow


def launch(overrides, processes=1, env=None, check=True, precision=None, recipe="lm.py"):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if processes == 1 and precision is None:
        cmd = [sys.executable, str(REPO / "recipes" / recipe), *overrides]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", *(["--multi_gpu"] if processes > 1 else []),
               "--num_processes", str(processes), "--num_machines", "1", "--mixed_precision", precision or "no",
               "--dynamo_backend", "no", str(REPO / "recipes" / recipe), *overrides]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def final_weights(run_dir: Path) -> dict:
    (checkpoint,) = (run_dir / "checkpoints").glob("step-*")
    return load_file(checkpoint / "model.safetensors")


def test_killed_run_resumes_bitwise(lm_corpus, tmp_path):
    # bptt 64 makes an epoch 8 chunks, so the 13 steps cross an epoch end; dropout makes RNG state matter.
    settings = {"data.bptt": 64, "model.dropout": 0.3, "train.epochs": 5, "train.max_steps": 13,
                "train.checkpoint_every": 3, "train.eval_every": 4, "train.lr": 2.0}
    straight = tmp_path / "straight"
    launch(tiny_lm_overrides(lm_corpus, straight, **settings))

    resumed = tmp_path / "resumed"
    killed = launch(tiny_lm_overrides(lm_corpus, resumed, **settings), env={"NLPRNN_KILL_AFTER_STEP": "8"},
                    check=False)
    assert killed.returncode == 137 and not (resumed / "result.json").exists()
    assert [p.name for p in (resumed / "checkpoints").glob("step-*")] == ["step-00000006"]
    # A kill during a checkpoint write leaves a temporary directory behind; resume must ignore it.
    (resumed / "checkpoints" / ".tmp-step-00000009").mkdir()
    out = launch(tiny_lm_overrides(lm_corpus, resumed, **settings))
    assert "resumed from" in out.stdout + out.stderr

    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((straight / "result.json").read_text())
    rb = json.loads((resumed / "result.json").read_text())
    assert ra["metrics"] == rb["metrics"] and rb["train"]["steps"] == 13
    assert [h["valid_ppl"] for h in ra["train"]["history"]] == [h["valid_ppl"] for h in rb["train"]["history"]]


def test_two_processes_equal_one(lm_corpus, tmp_path):
    settings = {"train.max_steps": 6, "train.lr": 1.0, "train.eval_every": 3}
    one, two = tmp_path / "one", tmp_path / "two"
    launch(tiny_lm_overrides(lm_corpus, one, **settings))
    launch(tiny_lm_overrides(lm_corpus, two, **settings), processes=2)
    a, b = final_weights(one), final_weights(two)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    ra = json.loads((one / "result.json").read_text())
    rb = json.loads((two / "result.json").read_text())
    assert rb["hardware"]["num_processes"] == 2 and "--num_processes 2" in rb["command"]
    assert rb["train"]["steps"] == 6
    assert rb["metrics"]["valid_ppl"] == pytest.approx(ra["metrics"]["valid_ppl"], rel=1e-5)


def test_validation_perplexity_does_not_depend_on_process_count(lm_corpus, tmp_path):
    # lr 0: both runs evaluate the same (seeded) weights. Sums are float64 and summed across processes before
    # dividing, so what remains is float32 rounding of kernels that see 2 streams per call instead of 1.
    settings = {"train.max_steps": 1, "train.lr": 0.0}
    one, two = tmp_path / "one", tmp_path / "two"
    launch(tiny_lm_overrides(lm_corpus, one, **settings))
    launch(tiny_lm_overrides(lm_corpus, two, **settings), processes=2)
    ra = json.loads((one / "result.json").read_text())["metrics"]
    rb = json.loads((two / "result.json").read_text())["metrics"]
    assert rb["valid_ppl"] == pytest.approx(ra["valid_ppl"], rel=1e-7)
    assert rb["test_ppl"] == pytest.approx(ra["test_ppl"], rel=1e-7)
    assert rb["valid_ppl"] != pytest.approx(ra["valid_ppl"] * 1.001, rel=1e-7)  # the check can fail


def test_two_processes_with_adaptive_softmax_tail_clusters_unused_in_some_batches(lm_corpus, tmp_path):
    # Cutoff 22 of 24 words: the tail holds the two rarest words, absent from many 2x8-token batches.
    settings = {"model.head": "adaptive", "model.adaptive_cutoffs": "[22]", "train.max_steps": 12}
    one, two = tmp_path / "one", tmp_path / "two"
    launch(tiny_lm_overrides(lm_corpus, one, **settings))
    launch(tiny_lm_overrides(lm_corpus, two, **settings), processes=2)
    a, b = final_weights(one), final_weights(two)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5


def test_finished_run_continues_when_its_limit_is_raised(lm_corpus, tmp_path):
    run_dir = tmp_path / "run"
    launch(tiny_lm_overrides(lm_corpus, run_dir, **{"train.max_steps": 4}))
    out = launch(tiny_lm_overrides(lm_corpus, run_dir, **{"train.max_steps": 4}))
    assert "resumed from" in out.stdout and json.loads((run_dir / "result.json").read_text())["train"]["steps"] == 4
    launch(tiny_lm_overrides(lm_corpus, run_dir, **{"train.max_steps": 7}))
    record = json.loads((run_dir / "result.json").read_text())
    assert record["train"]["steps"] == 7 and record["train"]["stop_reason"] == "max_steps"
    assert [h["step"] for h in record["train"]["history"]] == [4, 7]


def test_mixed_precision_comes_from_the_launcher(lm_corpus, tmp_path):
    run_dir = tmp_path / "bf16"
    launch(tiny_lm_overrides(lm_corpus, run_dir, **{"train.max_steps": 5}), precision="bf16")
    record = json.loads((run_dir / "result.json").read_text())
    assert record["hardware"]["mixed_precision"] == "bf16" and "--mixed_precision bf16" in record["command"]
    assert record["metrics"]["valid_ppl"] < 2 * record["data"]["vocab_size"]
