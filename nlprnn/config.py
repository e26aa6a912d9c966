"""Experiment configuration: dataclasses, mirrored by YAML files, overridden by `a.b=c` arguments.

A config is checked completely before any work starts: an unknown key, a wrong type or a value outside
its choices stops the run with a message that names the key and lists what is valid. Fields with a fixed
set of values say so in their metadata (`choices`), so the check and the documentation are one thing.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nlprnn.errors import NlprnnError


def choice(default, *choices, help: str = ""):
    """A field whose value must be one of `choices`."""
    return field(default=default, metadata={"choices": choices, "help": help})


@dataclass
class DataConfig:
    """Language modelling data (task lm)."""

    path: str = "../shared/data/wikitext-2"  # local folder with train/valid/test files, or a hub dataset id
    name: str | None = None  # hub dataset configuration, e.g. "wikitext-2-v1"
    min_freq: int = 1
    max_size: int | None = None
    batch_size: int = 20  # global number of BPTT streams, split across processes
    eval_batch_size: int = 10
    bptt: int = 35
    cache_dir: str | None = None  # where encoded token files live; default ~/.cache/nlprnn


@dataclass
class TranslationDataConfig:
    """Translation data (task mt): a folder of <split>.<lang> files or a hub dataset with one column per language."""

    path: str = "../shared/data/multi30k"
    name: str | None = None  # hub dataset configuration
    src: str = "de"
    tgt: str = "en"
    train_split: str = "train"  # stored split names (Multi30k's test set is test2016)
    valid_split: str = "valid"
    test_split: str = "test2016"
    joint_vocab: bool = True  # one SentencePiece model for both languages
    vocab_size: int = 8000  # SentencePiece pieces (per language when not joint)
    spm_model_type: str = choice("bpe", "bpe", "unigram")
    max_length: int = 100  # pieces; longer training pairs are skipped and counted
    max_tokens: int = 4096  # padded tokens per training batch (global, split across processes)
    eval_batch_size: int = 64  # sentences per decoding batch
    valid_subset: int = 0  # sentences of the valid split scored with BLEU during training; 0 = all


@dataclass
class TaggingDataConfig:
    """Sequence labelling data (task ner): a folder of CoNLL column files train.txt / valid.txt / test.txt."""

    path: str = "../shared/data/conll2003"
    token_column: int = 0
    tag_column: int = -1  # negative counts from the end
    file_scheme: str = choice("iob1", "iob1", "iob2", "bioes", help="the scheme the files are written in")
    tag_scheme: str = choice("bioes", "iob1", "iob2", "bioes", help="the scheme the model is trained in")
    strict: bool = False  # reject tag sequences the file scheme does not allow (else read them like conlleval)
    lowercase: bool = False  # word embeddings of lower-cased words (character features keep the case)
    digits_to_zero: bool = True  # 1984 and 2011 share a word vector: 0000
    min_freq: int = 1
    # Chance that a training word seen once is read as <unk> (Lample et al. 2016 use 0.5): otherwise the <unk>
    # vector, which every unseen test word gets, is never trained when min_freq is 1.
    unk_replace: float = 0.0
    batch_size: int = 10  # sentences per training batch (global, split across processes)
    eval_batch_size: int = 128


DATA_CONFIGS = {"lm": DataConfig, "mt": TranslationDataConfig, "ner": TaggingDataConfig}
DEFAULT_MODELS = {"lm": "lstm", "mt": "gru_attn", "ner": "birnn_tagger"}


@dataclass
class TrainConfig:
    optimizer: str = choice("sgd", "sgd", "adam", "adamw")
    lr: float = 20.0
    momentum: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    clip_norm: float = 0.25  # max gradient norm; 0 disables clipping
    grad_accum_steps: int = 1
    epochs: int = 40
    max_steps: int = 0  # optimizer steps; 0 = no limit
    max_minutes: float = 0.0  # wall-clock budget for training; 0 = no limit
    seed: int = 1111
    schedule: str = choice("plateau", "constant", "plateau", "cosine", "inverse_sqrt")
    warmup_steps: int = 0
    plateau_factor: float = 0.25  # lr multiplier when validation stops improving
    plateau_patience: int = 0
    min_lr: float = 0.0
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 disables
    eval_every: int = 0  # optimizer steps between evaluations; 0 = once per epoch
    checkpoint_every: int = 0  # optimizer steps between resumable checkpoints; 0 = at every evaluation
    log_every: int = 50
    max_nonfinite: int = 5  # consecutive non-finite losses/gradients tolerated before stopping
    label_smoothing: float = 0.0  # sentence tasks: cross-entropy against (1 - e) one-hot + e uniform
    metric: str = "auto"  # validation metric for best model, plateau and early stopping; auto = the task's own


@dataclass
class RunConfig:
    dir: str = "runs/default"
    resume: bool = True  # continue from <dir>/checkpoints/last when it exists
    save_model: bool = True  # write the best model with save_pretrained to <dir>/model
    tracker: str = choice("auto", "auto", "tensorboard", "none", help="auto = tensorboard when installed")
    progress: bool = True


@dataclass
class DecodeConfig:
    """Translation output: beam search settings for the test set and for validation BLEU during training."""

    beam_size: int = 5
    alpha: float = 0.6  # GNMT length penalty exponent; 0 ranks by log-probability alone
    max_ratio: float = 2.0  # an output may have at most ceil(max_ratio x source pieces) pieces
    valid_beam_size: int = 1  # beam for validation BLEU during training (1 = greedy, the fastest)


@dataclass
class LightRNNRoundsConfig:
    """Light RNN's bootstrap: train a round, re-allocate the words in the table, train the next round."""

    rounds: int = 0  # > 0: train rounds x epochs_per_round epochs (this sets train.epochs); 0: train.epochs
    epochs_per_round: int = 1  # re-allocate after every this many epochs, while training goes on
    solver: str = choice("sparse", "sparse", "dense", "greedy", "none",
                         help="none keeps the initial table (an ablation); see nlprnn.models.reallocate")
    candidates: int = 8  # the sparse solver's k: each word may take cells among its k best rows x k best columns
    candidate_rule: str = choice("priced", "priced", "plain")
    reallocations: int = 0  # re-allocate at most this many times, then train on with the table (0: no limit)
    # A move makes validation perplexity jump before training adapts; without a restart the plateau schedule
    # reads that jump as "no progress" and anneals the learning rate at every round.
    restart_plateau: bool = True


@dataclass
class TransferConfig:
    """Starting from pretrained weights; each key may also be given under model. (model.init_from=...)."""

    init_from: str | None = None  # a pretrained nlprnn language model (checkpoint folder): embeddings, RNN layers
    word_vectors: str | None = None  # GloVe / word2vec / fastText text file or word2vec .bin, aligned by word
    freeze: dict = field(default_factory=dict)  # module-name prefix -> epoch it starts training (-1: never)
    pretrained_lr_scale: float = 1.0  # learning-rate multiplier of the parameters that were transferred
    # match: copied word vectors are scaled by one factor to the std of the model's own random initialisation
    # (NCRF++'s norm_word_emb normalises each vector instead, which loses their relative norms)
    vector_scale: str = choice("none", "none", "match")
    # ner: add the source's words missing from the training data to the word vocabulary, so a test word never
    # seen in training but known to the LM or the vectors file keeps that vector instead of <unk>'s.
    add_source_words: bool = False


@dataclass
class ExperimentConfig:
    task: str = choice("lm", *DATA_CONFIGS)
    data: Any = field(default_factory=DataConfig)  # the task's own data dataclass (DATA_CONFIGS)
    model: dict = field(default_factory=lambda: {"name": "lstm"})  # resolved against the model's own config
    train: TrainConfig = field(default_factory=TrainConfig)
    run: RunConfig = field(default_factory=RunConfig)
    lightrnn: LightRNNRoundsConfig = field(default_factory=LightRNNRoundsConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)

    @property
    def model_name(self) -> str:
        return self.model["name"]

    def model_config(self, **filled_in):
        """The model's own config dataclass, with values only the data knows (vocab size) filled in."""
        from nlprnn.models import model_config

        values = {k: v for k, v in self.model.items() if k != "name"}
        values.update(filled_in)
        return model_config(self.model_name, values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------------------
# dict -> dataclass with type checks


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Return `value` as type `tp`, or raise an error naming `key`. Strings from the command line are parsed."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("null", "none") and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except NlprnnError as e:
                errors.append(str(e))
        raise NlprnnError(errors[0] if len(errors) == 1 else f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        if isinstance(value, str):
            value = yaml.safe_load(value) if value.strip().startswith("[") else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise NlprnnError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if isinstance(value, str) and value.strip().startswith("{"):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise NlprnnError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise NlprnnError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise NlprnnError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise NlprnnError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise NlprnnError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise NlprnnError(f"{key}: expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"config field {key} has an unsupported type {tp}")


def from_dict(cls, data: dict | None, prefix: str):
    """Build dataclass `cls` from `data`, checking every key and value; errors name `prefix.key`."""
    data = data or {}
    if not isinstance(data, dict):
        raise NlprnnError(f"{prefix}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise NlprnnError(
            f"unknown config key {where}{unknown[0]}; valid keys{' under ' + prefix if prefix else ''}: "
            + ", ".join(sorted(fields))
        )
    values = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        value = _coerce(value, hints[name], key)
        choices = fields[name].metadata.get("choices")
        if choices and value not in choices:
            raise NlprnnError(f"{key}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        values[name] = value
    return cls(**values)


# --------------------------------------------------------------------------------------------------------
# YAML + overrides -> ExperimentConfig


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}: the dotted keys overrides use."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _set_dotted(tree: dict, dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise NlprnnError(f"override {dotted}: '{part}' is a value, not a section")
        node = child
    # YAML parsing turns "true"/"3"/"[1, 2]" into values; field types then check and coerce them.
    try:
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        node[parts[-1]] = raw


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise NlprnnError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise NlprnnError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
    except UnicodeDecodeError as e:
        raise NlprnnError(f"{path}: not UTF-8 text (byte {e.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise NlprnnError(f"{path}: expected a mapping of sections (data, model, train, run), got {type(data).__name__}")
    return data


def load_config(config_path: str | Path | None = None, overrides: list[str] = (), **defaults) -> ExperimentConfig:
    """YAML file (optional) + `a.b=c` overrides -> a fully checked ExperimentConfig.

    `defaults` (e.g. task="lm") are applied before the file, so the file and the overrides win.
    """
    tree: dict = dict(defaults)
    if config_path is not None:
        for key, value in read_yaml(config_path).items():
            if isinstance(value, dict) and isinstance(tree.get(key), dict):
                tree[key] = {**tree[key], **value}
            else:
                tree[key] = value
    for item in overrides:
        if "=" not in item:
            raise NlprnnError(f"override '{item}': expected key=value, e.g. train.lr=0.5")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), raw)
    model = tree.pop("model", None) or {}
    data = tree.pop("data", None) or {}
    if isinstance(model, dict):  # model.init_from etc. are transfer settings, read from either place
        moved = {f.name: model.pop(f.name) for f in dataclasses.fields(TransferConfig) if f.name in model}
        if moved:
            tree["transfer"] = {**(tree.get("transfer") or {}), **moved}
    if not isinstance(model, dict):
        raise NlprnnError("model: expected a mapping with a 'name' (e.g. lstm, gru, rnn_tanh, transformer)")
    model = {"name": DEFAULT_MODELS.get(str(tree.get("task", "lm")), "lstm"), **model}
    config = from_dict(ExperimentConfig, tree, "")
    config.data = from_dict(DATA_CONFIGS[config.task], data, "data")
    # Resolve the model section against the model's own dataclass now, so its errors come at start-up too,
    # and record every default so the result file states the full configuration.
    config.model = {"name": str(model["name"])}
    _check_model_task(config)
    values = {k: v for k, v in model.items() if k != "name"}
    config.model.update(dataclasses.asdict(config.model_config(**values)))
    _check_lightrnn_rounds(config)
    _check_task_and_transfer_options(config)
    return config


def _check_task_and_transfer_options(config: ExperimentConfig) -> None:
    """unk_replace is a probability; add_source_words (ner only) and vector_scale need a transfer source."""
    if config.task == "ner" and not 0.0 <= config.data.unk_replace <= 1.0:
        raise NlprnnError(f"data.unk_replace: expected a probability in [0, 1], got {config.data.unk_replace}")
    t = config.transfer
    if t.add_source_words and config.task != "ner":
        raise NlprnnError(f"transfer.add_source_words: only the ner task has a word vocabulary to extend, "
                          f"task is {config.task}")
    if t.add_source_words and not (t.init_from or t.word_vectors):
        raise NlprnnError("transfer.add_source_words needs a source: model.init_from or model.word_vectors")
    if t.vector_scale != "none" and not (t.init_from or t.word_vectors):
        raise NlprnnError(f"transfer.vector_scale={t.vector_scale} needs a source: model.init_from or "
                          "model.word_vectors")


def _check_model_task(config: ExperimentConfig) -> None:
    from nlprnn.models import MODELS

    spec = MODELS.get(config.model_name)
    if spec is not None and spec.task != config.task:
        fitting = sorted(name for name, other in MODELS.items() if other.task == config.task)
        raise NlprnnError(f"model.name={config.model_name} is a model for task {spec.task}, not {config.task}; "
                          f"task {config.task} takes {', '.join(fitting)}")


def _check_lightrnn_rounds(config: ExperimentConfig) -> None:
    rounds = config.lightrnn
    if rounds.rounds < 0 or rounds.epochs_per_round < 1 or rounds.candidates < 1 or rounds.reallocations < 0:
        raise NlprnnError(f"lightrnn: expected rounds >= 0, epochs_per_round >= 1, candidates >= 1 and "
                          f"reallocations >= 0, got rounds={rounds.rounds}, epochs_per_round="
                          f"{rounds.epochs_per_round}, candidates={rounds.candidates}, "
                          f"reallocations={rounds.reallocations}")
    if config.model_name != "lightrnn":
        if rounds.rounds:
            raise NlprnnError(f"lightrnn.rounds={rounds.rounds}: re-allocation rounds need model.name=lightrnn, "
                              f"got model.name={config.model_name}")
        return
    if rounds.rounds:
        config.train.epochs = rounds.rounds * rounds.epochs_per_round


def parse_args(argv: list[str] | None = None, **defaults) -> ExperimentConfig:
    """`[--config FILE] [key=value ...]` as recipes take them."""
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = None
    rest = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise NlprnnError("--config needs a file path")
            config_path = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg in ("-h", "--help"):
            raise SystemExit(usage(defaults.get("task", "lm")))
        else:
            rest.append(arg)
        i += 1
    return load_config(config_path, rest, **defaults)


def usage(task: str = "lm") -> str:
    from nlprnn.models import MODELS

    lines = ["usage: [--config FILE.yaml] [section.key=value ...]", ""]
    for section in ("data", "train", "run", "lightrnn", "decode", "transfer"):
        cls = DATA_CONFIGS.get(task, DataConfig) if section == "data" else typing.get_type_hints(ExperimentConfig)[section]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            choices = f.metadata.get("choices")
            extra = f"  (one of {', '.join(choices)})" if choices else ""
            lines.append(f"  {section}.{f.name}={default}{extra}")
    lines.append(f"  model.name={'|'.join(sorted(MODELS))}  plus that model's keys (model.hidden_size=...)")
    return "\n".join(lines)


def dump_yaml(config: ExperimentConfig) -> str:
    return yaml.safe_dump(config.to_dict(), sort_keys=False)
