"""End-to-end runs of the LM recipe on a tiny corpus, in process (seconds each)."""

import json
import math

import pytest
from conftest import tiny_lm_overrides

from nlprnn.config import load_config
from nlprnn.errors import NlprnnError
from nlprnn.hub import from_pretrained
from nlprnn.train.experiment import run_experiment


def run(lm_corpus, tmp_path, **extra):
    return run_experiment(load_config(None, tiny_lm_overrides(lm_corpus, tmp_path / "run", **extra), task="lm"))


def test_tiny_run_learns_and_writes_a_complete_record(lm_corpus, tmp_path, fresh_accelerate_state):
    record = run(lm_corpus, tmp_path)
    on_disk = json.loads((tmp_path / "run" / "result.json").read_text())
    assert on_disk["metrics"] == record["metrics"]
    vocab_size = record["data"]["vocab_size"]
    assert vocab_size == 2 + 22  # <unk>, <eos> + the fixture's 22 distinct words and "."
    # A uniform guess scores ppl = vocab size; the grammar makes the true entropy far lower.
    assert record["metrics"]["valid_ppl"] < 8 and record["metrics"]["test_ppl"] < 8
    assert record["metrics"]["valid_ppl"] == pytest.approx(math.exp(record["metrics"]["valid_nll"]))
    train = record["train"]
    assert train["stop_reason"] == "epochs" and train["epochs"] == 2
    assert train["steps"] == 2 * math.ceil((record["data"]["tokens"]["train"] // 4 - 1) / 8)
    assert train["tokens_per_second"] > 0 and len(train["history"]) == 2
    embedding_softmax = 16 * vocab_size + (16 * vocab_size + vocab_size)  # input table + untied output layer
    assert record["params"] == {"total": embedding_softmax + 4 * 16 * (16 + 16 + 2),
                                "embedding_softmax": embedding_softmax}
    for key in ("hardware", "git_commit", "command", "config", "peak_memory_bytes", "seed"):
        assert key in on_disk
    model, vocab = from_pretrained(tmp_path / "run" / "model")
    assert len(vocab) == vocab_size and model.config.hidden_size == 16


def test_step_budget_accumulation_and_early_stopping(lm_corpus, tmp_path, fresh_accelerate_state):
    record = run(lm_corpus, tmp_path, **{"train.max_steps": 7, "train.grad_accum_steps": 2})
    assert record["train"]["steps"] == 7 and record["train"]["stop_reason"] == "max_steps"
    assert record["train"]["epochs"] == pytest.approx(14 / math.ceil((record["data"]["tokens"]["train"] // 4 - 1) / 8))


def test_without_the_progress_bar_a_line_is_printed_every_log_every_steps(lm_corpus, tmp_path, capsys,
                                                                          fresh_accelerate_state):
    run(lm_corpus, tmp_path, **{"train.max_steps": 6, "train.log_every": 2})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step ") and "| loss" in line]
    assert [line.split()[1] for line in lines] == ["2", "4", "6"]
    assert "tokens/s" in lines[0] and "epoch 1 batch 2/" in lines[0]


def test_early_stopping(lm_corpus, tmp_path, fresh_accelerate_state):
    # lr 0 never improves after the first evaluation, so patience 2 stops after three evaluations.
    record = run(lm_corpus, tmp_path, **{"train.lr": 0.0, "train.epochs": 10, "train.eval_every": 3,
                                         "train.early_stopping_patience": 2})
    assert record["train"]["stop_reason"] == "early_stopping" and record["train"]["steps"] == 9


def test_nonfinite_steps_are_skipped_then_stop(lm_corpus, tmp_path, fresh_accelerate_state, monkeypatch):
    from nlprnn.train.tasks import LanguageModeling

    original = LanguageModeling.train_loss

    def poisoned(self, model, batch):
        loss, tokens = original(self, model, batch)
        return loss * float("nan"), tokens

    monkeypatch.setattr(LanguageModeling, "train_loss", poisoned)
    with pytest.raises(NlprnnError, match="3 non-finite losses or gradients in a row at step 3"):
        run(lm_corpus, tmp_path, **{"train.max_nonfinite": 3})
