import json
import math

import pytest

from nlprnn.errors import NlprnnError
from nlprnn.metrics import Throughput, corpus_perplexity, peak_memory_bytes, perplexity
from nlprnn.results import command_line, git_commit, read_record, validate_record, write_record


def test_perplexity_is_exp_of_mean_token_nll():
    assert perplexity(2 * math.log(10), 2) == pytest.approx(10.0)
    # Summed before dividing: two halves of unequal size are not averaged per half.
    assert corpus_perplexity(3.0 + 1.0, 3 + 1)["ppl"] == pytest.approx(math.e)
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(ValueError):
        perplexity(1.0, 0)


def test_throughput_and_memory():
    t = Throughput()
    t.add(1000, 0.5)
    t.add(1000, 1.5)
    assert t.tokens_per_second == 1000.0
    assert peak_memory_bytes() > 10_000_000  # this process's peak RSS: at least torch itself


def record(**changes):
    base = {
        "task": "lm", "dataset": "toy", "model": "lstm", "params": {"total": 10, "embedding_softmax": 4},
        "metrics": {"valid_ppl": 5.0, "test_ppl": 6.0},
        "train": {"tokens_per_second": 1.0, "wall_seconds": 2.0, "steps": 3, "epochs": 1.0},
        "peak_memory_bytes": 100, "hardware": {"cpu": "x"}, "seed": 1, "git_commit": "abc",
        "command": "python recipes/lm.py", "config": {},
    }
    base.update(changes)
    return base


def test_records_are_validated_with_the_file_named(tmp_path):
    path = write_record(tmp_path / "r" / "result.json", record())
    assert read_record(path)["schema_version"] == 1
    bad = record(seed="1")
    del bad["command"]
    bad["metrics"] = {"valid_ppl": 1.0}
    with pytest.raises(NlprnnError) as e:
        validate_record(bad, "x.json")
    assert "x.json" in str(e.value) and "missing 'command'" in str(e.value)
    assert "'seed' should be int" in str(e.value) and "metrics.test_ppl" in str(e.value)
    with pytest.raises(NlprnnError, match="git_commit"):
        validate_record(record(git_commit="unknown"), "y.json")
    (tmp_path / "broken.json").write_text('{"task": ')
    with pytest.raises(NlprnnError, match="broken.json: not a JSON run record"):
        read_record(tmp_path / "broken.json")


def test_failed_write_leaves_no_file(tmp_path):
    with pytest.raises(NlprnnError):
        write_record(tmp_path / "result.json", {"task": "lm"})
    assert list(tmp_path.iterdir()) == []
    json.loads(write_record(tmp_path / "result.json", record()).read_text())


def test_provenance():
    commit = git_commit()
    assert commit == "unknown" or len(commit.split("-")[0]) == 40
    assert "pytest" in command_line() or "py" in command_line()


def test_commands_name_files_in_the_checkout_relative_to_its_root(tmp_path):
    from nlprnn.results import repo_relative

    repo = tmp_path / "clone"
    (repo / "recipes" / "configs").mkdir(parents=True)
    assert repo_relative(str(repo / "recipes" / "ner.py"), repo) == "recipes/ner.py"
    assert repo_relative(f"--config={repo}/recipes/configs/x.yaml", repo) == "--config=recipes/configs/x.yaml"
    assert repo_relative("run.dir=/work/runs/a", repo) == "run.dir=/work/runs/a"  # outside: kept
    assert repo_relative("train.seed=1", repo) == "train.seed=1"
