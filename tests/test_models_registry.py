"""The model registry (names -> config and model classes) and the helpers every LM shares."""

import dataclasses

import pytest
import torch
from torch import nn

from nlprnn.config import load_config
from nlprnn.errors import NlprnnError
from nlprnn.models import (
    MODELS,
    RNNLM,
    RNNLMConfig,
    TransformerLM,
    TransformerLMConfig,
    build_model,
    count_parameters,
    detach_state,
    model_config,
)

SMALL = {
    "lstm": dict(embedding_size=8, hidden_size=8),
    "gru": dict(embedding_size=8, hidden_size=8),
    "rnn_tanh": dict(embedding_size=8, hidden_size=8),
    "rnn_relu": dict(embedding_size=8, hidden_size=8),
    "lightrnn": dict(embedding_size=8, hidden_size=8),
    "transformer": dict(d_model=8, n_heads=2, n_layers=1, d_ff=16, context_size=8),
    "gru_attn": dict(embedding_size=8, hidden_size=8),
    "lstm_attn": dict(embedding_size=8, hidden_size=8),
    "transformer_seq2seq": dict(d_model=8, n_heads=2, encoder_layers=1, decoder_layers=1, d_ff=16),
    "birnn_tagger": dict(embedding_size=8, hidden_size=8, char_embedding_size=4, char_hidden_size=4),
    "transformer_tagger": dict(embedding_size=8, d_model=8, n_heads=2, n_layers=1, d_ff=16, char_embedding_size=4,
                               char_hidden_size=4),
}
LM_MODELS = sorted(name for name, spec in MODELS.items() if spec.task == "lm")
MT_MODELS = sorted(name for name, spec in MODELS.items() if spec.task == "mt")
NER_MODELS = sorted(name for name, spec in MODELS.items() if spec.task == "ner")


def test_registry_names():
    assert LM_MODELS == ["gru", "lightrnn", "lstm", "rnn_relu", "rnn_tanh", "transformer"]
    assert MT_MODELS == ["gru_attn", "lstm_attn", "transformer_seq2seq"]
    assert NER_MODELS == ["birnn_tagger", "transformer_tagger"]
    assert sorted(SMALL) == sorted(MODELS)


@pytest.mark.parametrize("name", MT_MODELS)
def test_build_every_translation_model_by_name(name):
    model = build_model(name, src_vocab_size=11, tgt_vocab_size=7, **SMALL[name])
    assert model.model_name == name and isinstance(model, MODELS[name].model_cls)
    src, tgt = torch.randint(4, 11, (2, 5)), torch.randint(4, 7, (2, 3))
    assert model(src, torch.tensor([5, 5]), tgt).shape == (2, 3, 7)
    counts = model.param_counts()
    assert 0 < counts["embedding_softmax"] < counts["total"]


@pytest.mark.parametrize("name", NER_MODELS)
def test_build_every_tagger_by_name(name):
    tags = ["O", "B-PER", "I-PER", "E-PER", "S-PER"]
    model = build_model(name, vocab_size=11, char_vocab_size=7, tags=tags, **SMALL[name])
    words, chars = torch.randint(2, 11, (2, 5)), torch.randint(2, 7, (2, 5, 4))
    emissions = model(words, chars, torch.ones(2, 5, dtype=torch.bool))
    assert emissions.shape == (2, 5, 5)
    counts = model.param_counts()
    assert 0 < counts["embedding_softmax"] < counts["total"]


def test_a_model_must_fit_the_task():
    with pytest.raises(NlprnnError, match="model.name=gru_attn is a model for task mt, not lm"):
        load_config(overrides=["model.name=gru_attn"])
    with pytest.raises(NlprnnError, match="task mt takes gru_attn, lstm_attn, transformer_seq2seq"):
        load_config(overrides=["task=mt", "model.name=lstm"])
    assert load_config(overrides=["task=mt"]).model_name == "gru_attn"


@pytest.mark.parametrize("name", LM_MODELS)
def test_build_every_model_by_name(name):
    model = build_model(name, vocab_size=11, **SMALL[name])
    assert model.model_name == name
    assert isinstance(model.config, MODELS[name].config_cls)
    assert isinstance(model, MODELS[name].model_cls)
    if name not in ("transformer", "lightrnn"):
        assert model.config.cell == name
    inputs = torch.randint(0, 11, (2, 5))
    nll, _ = model(inputs, inputs)
    assert nll.shape == (2, 5)


def test_model_config_fills_in_the_implied_cell_and_checks_types():
    config = model_config("gru", {"hidden_size": "16", "embedding_size": 16, "dropout": 0})
    assert config == RNNLMConfig(cell="gru", hidden_size=16, embedding_size=16, dropout=0.0)
    assert model_config("lstm", {"head": "adaptive", "adaptive_cutoffs": "[4, 8]"}).adaptive_cutoffs == [4, 8]
    assert model_config("transformer") == TransformerLMConfig()


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(NlprnnError, match="birnn_tagger, gru, gru_attn, lightrnn, lstm, lstm_attn, rnn_relu"):
        model_config("lstn")
    with pytest.raises(NlprnnError, match="'lstn'"):
        build_model("lstn", vocab_size=5)


@pytest.mark.parametrize(
    "name, values, message",
    [
        ("lstm", {"hidden_sise": 8}, "model.hidden_sise"),
        ("lstm", {"num_layers": "two"}, "model.num_layers"),
        ("lstm", {"tie_weights": "maybe"}, "model.tie_weights"),
        ("transformer", {"cell": "lstm"}, "model.cell"),
        ("gru", {"cell": "lstm"}, "contradicts model.name='gru'"),
        ("lstm", {"cell": "bogus"}, "contradicts model.name='lstm'"),
        ("lstm", {"embedding_size": 8, "hidden_size": 16, "tie_weights": True}, "model.tie_weights"),
    ],
)
def test_bad_model_values_raise(name, values, message):
    with pytest.raises(NlprnnError, match=message):
        model_config(name, values)


def test_build_model_from_a_config_instance():
    config = RNNLMConfig(vocab_size=7, cell="rnn_tanh", embedding_size=4, hidden_size=4)
    model = build_model("rnn_tanh", config)
    assert model.config is config and isinstance(model, RNNLM)
    with pytest.raises(NlprnnError, match="contradicts model.name='gru'"):
        build_model("gru", config)
    with pytest.raises(NlprnnError, match="needs a TransformerLMConfig"):
        build_model("transformer", config)
    with pytest.raises(TypeError):
        build_model("rnn_tanh", config, hidden_size=8)


def test_a_saved_config_rebuilds_the_same_model():
    # Checkpoints store dataclasses.asdict(model.config) and call build_model(name, **that).
    model = build_model("transformer", vocab_size=11, **SMALL["transformer"])
    rebuilt = build_model("transformer", **dataclasses.asdict(model.config))
    assert isinstance(rebuilt, TransformerLM) and rebuilt.config == model.config


def test_experiment_config_resolves_the_model_section():
    config = load_config(overrides=["model.name=gru", "model.hidden_size=12", "model.embedding_size=12"])
    assert config.model["cell"] == "gru" and config.model["hidden_size"] == 12
    model = build_model(config.model_name, config.model_config(vocab_size=9))
    assert model.config.vocab_size == 9 and model.rnn.hidden_size == 12
    with pytest.raises(NlprnnError, match="contradicts model.name='gru'"):
        load_config(overrides=["model.name=gru", "model.cell=lstm"])


# ---------------------------------------------------------------------------------------------------------
# shared helpers


def test_detach_state_handles_every_state_shape():
    x = torch.ones(2, requires_grad=True)
    h, c = x * 2, x * 3
    assert detach_state(None) is None
    assert not detach_state(h).requires_grad
    detached = detach_state((h, [c, (h,)]))
    assert isinstance(detached, tuple) and isinstance(detached[1], list)
    assert not detached[0].requires_grad and not detached[1][1][0].requires_grad
    torch.testing.assert_close(detached[1][0], c.detach())
    tokens = torch.arange(3)
    assert torch.equal(detach_state(tokens), tokens)


def test_count_parameters_counts_shared_tensors_once():
    embedding, linear = nn.Embedding(5, 3), nn.Linear(3, 5)
    linear.weight = embedding.weight
    assert count_parameters(nn.ModuleList([embedding, linear])) == 15 + 5
    assert count_parameters([embedding.weight, linear.weight, linear.bias]) == 15 + 5
