"""The model registry: a config's `model.name` -> the config dataclass and the nn.Module it builds.

Several names can share one model class and differ only in values their name implies (`gru` is an RNNLM
with `cell="gru"`); those values live in `ModelSpec.fixed`, and a config that contradicts them is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from nlprnn.config import from_dict
from nlprnn.errors import NlprnnError
from nlprnn.models.common import count_parameters, detach_state, init_weights
from nlprnn.models.lightrnn import LightRNN, LightRNNConfig
from nlprnn.models.rnnlm import RNNLM, RNNLMConfig
from nlprnn.models.seq2seq import Seq2Seq, Seq2SeqConfig
from nlprnn.models.tagger import BiRNNTagger, BiRNNTaggerConfig, TransformerTagger, TransformerTaggerConfig
from nlprnn.models.transformer import TransformerLM, TransformerLMConfig
from nlprnn.models.transformer_seq2seq import TransformerSeq2Seq, TransformerSeq2SeqConfig


@dataclass(frozen=True)
class ModelSpec:
    config_cls: type
    model_cls: type
    fixed: dict  # config values the name implies, e.g. {"cell": "gru"}
    task: str = "lm"  # the task whose contract the model follows


MODELS: dict[str, ModelSpec] = {
    **{cell: ModelSpec(RNNLMConfig, RNNLM, {"cell": cell}) for cell in ("lstm", "gru", "rnn_tanh", "rnn_relu")},
    "lightrnn": ModelSpec(LightRNNConfig, LightRNN, {}),
    "transformer": ModelSpec(TransformerLMConfig, TransformerLM, {}),
    **{f"{cell}_attn": ModelSpec(Seq2SeqConfig, Seq2Seq, {"cell": cell}, "mt") for cell in ("gru", "lstm")},
    "transformer_seq2seq": ModelSpec(TransformerSeq2SeqConfig, TransformerSeq2Seq, {}, "mt"),
    "birnn_tagger": ModelSpec(BiRNNTaggerConfig, BiRNNTagger, {}, "ner"),
    "transformer_tagger": ModelSpec(TransformerTaggerConfig, TransformerTagger, {}, "ner"),
}


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise NlprnnError(f"model.name: unknown model {name!r}; expected one of {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _check_fixed(name: str, spec: ModelSpec, values: dict) -> None:
    for key, implied in spec.fixed.items():
        if key in values and values[key] != implied:
            raise NlprnnError(
                f"model.{key}={values[key]!r} contradicts model.name={name!r}, which implies {key}={implied!r}; "
                f"drop model.{key} or set model.name={values[key]!r}"
            )


def model_config(name: str, values: dict | None = None):
    """The config dataclass for model `name`, built from `values` (keys and types checked)."""
    spec = _spec(name)
    values = dict(values or {})
    _check_fixed(name, spec, values)
    return from_dict(spec.config_cls, {**values, **spec.fixed}, prefix="model")


def build_model(name: str, config=None, **values) -> nn.Module:
    """Build model `name` from a config instance, or from config values given as keywords."""
    spec = _spec(name)
    if config is None:
        config = model_config(name, values)
    else:
        if values:
            raise TypeError("build_model takes a config instance or config values, not both")
        if not isinstance(config, spec.config_cls):
            raise NlprnnError(
                f"model.name={name!r} needs a {spec.config_cls.__name__}, got a {type(config).__name__}"
            )
        _check_fixed(name, spec, vars(config))
    model = spec.model_cls(config)
    model.model_name = name
    return model


__all__ = [
    "MODELS",
    "BiRNNTagger",
    "BiRNNTaggerConfig",
    "LightRNN",
    "LightRNNConfig",
    "RNNLM",
    "ModelSpec",
    "RNNLMConfig",
    "Seq2Seq",
    "Seq2SeqConfig",
    "TransformerSeq2Seq",
    "TransformerTagger",
    "TransformerTaggerConfig",
    "TransformerSeq2SeqConfig",
    "TransformerLM",
    "TransformerLMConfig",
    "build_model",
    "count_parameters",
    "detach_state",
    "init_weights",
    "model_config",
]
