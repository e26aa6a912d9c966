from pathlib import Path

import pytest

from nlprnn.config import TrainConfig, from_dict, load_config, parse_args
from nlprnn.errors import NlprnnError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "recipes" / "configs").rglob("*.yaml"))


def test_defaults_and_dotted_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  bptt: 50\nmodel:\n  name: gru\n  hidden_size: 64\ntrain:\n  lr: 1.5\n")
    cfg = load_config(path, ["train.lr=0.25", "model.num_layers=3", "train.betas=[0.8, 0.9]", "data.max_size=null"])
    assert cfg.data.bptt == 50 and cfg.data.batch_size == 20
    assert cfg.train.lr == 0.25 and cfg.train.betas == [0.8, 0.9] and cfg.data.max_size is None
    assert cfg.model["name"] == "gru" and cfg.model["cell"] == "gru"
    assert cfg.model["hidden_size"] == 64 and cfg.model["num_layers"] == 3
    assert cfg.model_config(vocab_size=11).vocab_size == 11


def test_numbers_from_the_command_line_are_coerced_to_the_field_type():
    cfg = parse_args(["train.lr=1e-3", "train.max_minutes=2", "train.epochs=3.0", "run.resume=false"])
    assert cfg.train.lr == 0.001 and isinstance(cfg.train.max_minutes, float)
    assert cfg.train.epochs == 3 and cfg.run.resume is False


def test_unknown_key_lists_valid_keys():
    with pytest.raises(NlprnnError, match=r"unknown config key train\.lrate; valid keys under train: .*lr,"):
        load_config(None, ["train.lrate=1"])
    with pytest.raises(NlprnnError, match=r"unknown config key optim"):
        load_config(None, ["optim.lr=1"])
    with pytest.raises(NlprnnError, match="model.hiden_size"):
        load_config(None, ["model.hiden_size=3"])


@pytest.mark.parametrize("override, message", [
    ("train.epochs=many", "train.epochs: expected an integer, got 'many'"),
    ("train.lr=fast", "train.lr: expected a number"),
    ("run.resume=maybe", "run.resume: expected true or false"),
    ("train.optimizer=rmsprop", "train.optimizer: expected one of sgd, adam, adamw, got 'rmsprop'"),
    ("model.name=lstmm", "lstmm"),
    ("train", "expected key=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(NlprnnError, match=message.replace(".", r"\.").replace("(", r"\(")):
        load_config(None, [override])


def test_yaml_errors_name_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1\n")
    with pytest.raises(NlprnnError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_config(bad)
    with pytest.raises(NlprnnError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(NlprnnError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_from_dict_checks_nested_types():
    assert from_dict(TrainConfig, {"betas": "0.5,0.6"}, "train").betas == [0.5, 0.6]
    with pytest.raises(NlprnnError, match=r"train\.betas\[1\]"):
        from_dict(TrainConfig, {"betas": [0.5, "x"]}, "train")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_load_and_state_their_launch_command(path):
    cfg = load_config(path)
    assert cfg.task == path.parent.name  # configs/lm/*, configs/mt/*
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and path.relative_to(REPO).as_posix() in first
