"""Light RNN trained by the recipe: re-allocation rounds, resume across a re-allocation, 2 processes equal 1."""

import json

import pytest
import torch
from conftest import tiny_lm_overrides
from test_resume_distributed import final_weights, launch

from nlprnn.config import load_config
from nlprnn.errors import NlprnnError
from nlprnn.hub import from_pretrained

pytestmark = pytest.mark.slow

LIGHTRNN = {"model.name": "lightrnn", "train.lr": 1.0, "lightrnn.solver": "dense"}


def test_rounds_set_the_epochs_and_need_a_lightrnn():
    config = load_config(None, ["model.name=lightrnn", "lightrnn.rounds=3", "lightrnn.epochs_per_round=2"])
    assert config.train.epochs == 6
    with pytest.raises(NlprnnError, match="re-allocation rounds need model.name=lightrnn"):
        load_config(None, ["model.name=lstm", "lightrnn.rounds=3"])
    with pytest.raises(NlprnnError, match="lightrnn.solver"):
        load_config(None, ["model.name=lightrnn", "lightrnn.solver=hungarian"])


def test_rounds_reallocate_between_epochs_and_the_saved_model_keeps_the_table(lm_corpus, tmp_path):
    run_dir = tmp_path / "run"
    out = launch(tiny_lm_overrides(lm_corpus, run_dir, **LIGHTRNN, **{"lightrnn.rounds": 3}))
    assert out.stdout.count("re-allocation") == 2
    record = json.loads((run_dir / "result.json").read_text())
    rounds = record["lightrnn"]["reallocations"]
    assert [r["round"] for r in rounds] == [1, 2] and [r["epoch"] for r in rounds] == [1, 2]
    history = record["train"]["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and record["train"]["stop_reason"] == "epochs"
    for r, h in zip(rounds, history):
        assert r["valid_ppl_before"] == h["valid_ppl"] and r["step"] == h["step"]
        assert r["cost_after"] <= r["cost_before"] and r["words_moved"] > 0 and r["valid_ppl_after"] > 0
    model, _ = from_pretrained(run_dir / "model")
    checkpoint = final_weights(run_dir)
    assert torch.equal(model.table.word_row, checkpoint["table.word_row"])
    # Not the initial table any more.
    assert not torch.equal(model.table.cell_word, type(model)(model.config).table.cell_word)


def test_reallocations_cap_the_moves_and_restart_the_plateau(lm_corpus, tmp_path):
    run_dir = tmp_path / "run"
    settings = {**LIGHTRNN, "lightrnn.rounds": 4, "lightrnn.reallocations": 1, "train.schedule": "plateau"}
    launch(tiny_lm_overrides(lm_corpus, run_dir, **settings))
    record = json.loads((run_dir / "result.json").read_text())
    assert [r["epoch"] for r in record["lightrnn"]["reallocations"]] == [1]
    assert [h["epoch"] for h in record["train"]["history"]] == [1, 2, 3, 4]
    state = json.loads(next(run_dir.glob("checkpoints/*/trainer_state.json")).read_text())
    # The reference restarted after epoch 1's move: the best metric seen since is from epoch 2 on.
    history = [h["valid_ppl"] for h in record["train"]["history"]]
    assert state["schedule"]["best"] == pytest.approx(min(history[1:]))


def test_generate_and_evaluate_a_trained_lightrnn(capsys, lm_corpus, tmp_path, fresh_accelerate_state):
    from nlprnn.cli import main

    run_dir = tmp_path / "run"
    assert main(["train", *tiny_lm_overrides(lm_corpus, run_dir, **{**LIGHTRNN, "lightrnn.rounds": 2,
                                                                     "data.eval_batch_size": 10})]) == 0
    record = json.loads((run_dir / "result.json").read_text())
    capsys.readouterr()
    assert main(["generate", "--model", str(run_dir / "model"), "--words", "12", "--top-k", "5"]) == 0
    assert 6 <= len(capsys.readouterr().out.split()) <= 12
    assert main(["evaluate", "--model", str(run_dir / "model"), "--data", str(lm_corpus), "--split", "test",
                 "--batch-size", "10", "--bptt", "8"]) == 0
    assert f"test ppl {record['metrics']['test_ppl']:.2f}" in capsys.readouterr().out


def test_solver_none_keeps_the_initial_table(lm_corpus, tmp_path):
    run_dir = tmp_path / "run"
    launch(tiny_lm_overrides(lm_corpus, run_dir, **{**LIGHTRNN, "lightrnn.rounds": 2, "lightrnn.solver": "none"}))
    record = json.loads((run_dir / "result.json").read_text())
    assert record["lightrnn"]["reallocations"] == [] and record["train"]["epochs"] == 2
    model, _ = from_pretrained(run_dir / "model")
    assert torch.equal(model.table.cell_word, type(model)(model.config).table.cell_word)


def test_killed_after_a_reallocation_resumes_bitwise(lm_corpus, tmp_path):
    # An epoch is 69 steps on this corpus: the kill comes 3 steps into round 2, after the checkpoint that
    # holds the re-allocated table.
    settings = {**LIGHTRNN, "lightrnn.rounds": 2, "model.dropout": 0.2}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    launch(tiny_lm_overrides(lm_corpus, straight, **settings))
    killed = launch(tiny_lm_overrides(lm_corpus, resumed, **settings), env={"NLPRNN_KILL_AFTER_STEP": "72"},
                    check=False)
    assert killed.returncode == 137
    out = launch(tiny_lm_overrides(lm_corpus, resumed, **settings))
    assert "resumed from" in out.stdout + out.stderr and "re-allocation" not in out.stdout
    a, b = final_weights(straight), final_weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra = json.loads((straight / "result.json").read_text())
    rb = json.loads((resumed / "result.json").read_text())
    assert ra["metrics"] == rb["metrics"] and ra["lightrnn"] == _without_timings(rb["lightrnn"], ra["lightrnn"])


def _without_timings(record, like):
    """`record` with the wall-clock fields of `like` (the only ones a resumed run may differ in)."""
    out = {"reallocations": []}
    for mine, theirs in zip(record["reallocations"], like["reallocations"]):
        out["reallocations"].append({**mine, "seconds": theirs["seconds"], "cost_seconds": theirs["cost_seconds"]})
    return out


def test_two_processes_reallocate_like_one(lm_corpus, tmp_path):
    settings = {**LIGHTRNN, "lightrnn.rounds": 2, "lightrnn.solver": "sparse", "lightrnn.candidates": 3}
    one, two = tmp_path / "one", tmp_path / "two"
    launch(tiny_lm_overrides(lm_corpus, one, **settings))
    launch(tiny_lm_overrides(lm_corpus, two, **settings), processes=2)
    ra = json.loads((one / "result.json").read_text())
    rb = json.loads((two / "result.json").read_text())
    (first,), (second,) = ra["lightrnn"]["reallocations"], rb["lightrnn"]["reallocations"]
    assert second["cost_before"] == pytest.approx(first["cost_before"], rel=1e-6)
    assert second["cost_after"] == pytest.approx(first["cost_after"], rel=1e-6)
    assert second["words_moved"] == first["words_moved"] > 0
    a, b = final_weights(one), final_weights(two)
    for name in ("table.word_row", "table.word_col", "table.cell_word"):
        assert torch.equal(a[name], b[name])
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
