"""The command line: bad input gives one clear line and exit status 2; generate/evaluate work on a saved model."""

import subprocess
import sys

import pytest
from conftest import REPO, tiny_lm_overrides

from nlprnn.cli import main


def fails_cleanly(capsys, argv, *fragments):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nlprnn: error: ") and "Traceback" not in err and err.count("\n") == 1
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.fixture
def train_args(lm_corpus, tmp_path):
    return ["train", *tiny_lm_overrides(lm_corpus, tmp_path / "run")]


def test_missing_empty_and_undecodable_splits(capsys, lm_corpus, train_args):
    (lm_corpus / "valid.txt").unlink()
    fails_cleanly(capsys, train_args, "valid.txt", "missing split file")
    (lm_corpus / "valid.txt").write_text("")
    fails_cleanly(capsys, train_args, "valid.txt", "empty")
    (lm_corpus / "valid.txt").write_bytes(b" fine line\n another\n bad \xff byte\n")
    fails_cleanly(capsys, train_args, "valid.txt:3", "UTF-8")


def test_path_neither_folder_nor_hub_id(capsys, tmp_path, train_args):
    fails_cleanly(capsys, train_args + [f"data.path={tmp_path}/nowhere/data.txt"], "nowhere/data.txt",
                  "neither a folder")
    fails_cleanly(capsys, train_args + ["data.path=no-such-dataset-xyz"], "no-such-dataset-xyz")


def test_config_errors(capsys, tmp_path, train_args):
    fails_cleanly(capsys, train_args + ["train.lrr=1"], "unknown config key train.lrr", "valid keys")
    fails_cleanly(capsys, train_args + ["train.epochs=two"], "train.epochs: expected an integer")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1\n   epochs: 2\n")
    fails_cleanly(capsys, ["train", "--config", str(bad)], "bad.yaml:")


def test_checkpoint_vocab_mismatch(capsys, lm_corpus, tmp_path, train_args, fresh_accelerate_state):
    assert main(train_args) == 0
    model = tmp_path / "run" / "model"
    capsys.readouterr()
    assert main(["generate", "--model", str(model), "--words", "12", "--top-k", "5"]) == 0
    words = capsys.readouterr().out.split()
    assert 6 <= len(words) <= 12  # <eos> samples become new lines
    assert main(["evaluate", "--model", str(model), "--data", str(lm_corpus), "--split", "valid",
                 "--batch-size", "2", "--bptt", "8"]) == 0
    assert "valid ppl" in capsys.readouterr().out
    vocab = (model / "vocab.json").read_text()
    (model / "vocab.json").write_text(vocab.replace('"cat"', '"kat"'))
    fails_cleanly(capsys, ["generate", "--model", str(model)], "vocab.json", "does not match")


def test_module_entry_point_and_recipe_exit_status(tmp_path):
    out = subprocess.run([sys.executable, "-m", "nlprnn", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--config" in out.stdout
    out = subprocess.run([sys.executable, str(REPO / "recipes" / "lm.py"), "model.name=nope"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "nlprnn: error:" in out.stderr and "Traceback" not in out.stderr
