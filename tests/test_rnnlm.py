"""RNNLM: the LM contract (shapes, nll vs. next-token log-probs, carried state), tying, init, overfitting."""

import math

import pytest
import torch

from nlprnn.errors import NlprnnError
from nlprnn.models.rnnlm import RNNLM, RNNLMConfig, resolve_adaptive_cutoffs

CELLS = ["lstm", "gru", "rnn_tanh", "rnn_relu"]
VOCAB = 20


@pytest.fixture(autouse=True)
def one_thread():
    # Models this small run fastest on one thread; on a busy 2-core machine, extra threads spin against
    # other processes and make a 1-second test take 20.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(cell="lstm", **overrides) -> RNNLM:
    torch.manual_seed(0)
    values = dict(vocab_size=VOCAB, cell=cell, embedding_size=8, hidden_size=8, num_layers=2, dropout=0.0)
    if overrides.get("head") == "adaptive":
        values["adaptive_cutoffs"] = [5, 10]
        values["adaptive_div_value"] = 2.0
    values.update(overrides)
    return RNNLM(RNNLMConfig(**values)).eval()


def random_batch(batch=3, steps=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch, steps + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("head", ["full", "adaptive"])
@pytest.mark.parametrize("cell", CELLS)
def test_shapes_dtypes_and_state(cell, head):
    model = tiny(cell, head=head)
    inputs, targets = random_batch()
    nll, state = model(inputs, targets)
    assert nll.shape == (3, 6) and nll.dtype == torch.float32
    assert (nll > 0).all()
    hidden_states = state if cell == "lstm" else (state,)
    assert len(hidden_states) == (2 if cell == "lstm" else 1)
    for h in hidden_states:
        assert h.shape == (2, 3, 8)  # (num_layers, batch, hidden)
        assert h.requires_grad  # not detached: the training loop decides where BPTT stops

    logprobs, _ = model.next_token_logprobs(inputs)
    assert logprobs.shape == (3, VOCAB) and logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs.exp().sum(-1), torch.ones(3))


@pytest.mark.parametrize("head", ["full", "adaptive"])
@pytest.mark.parametrize("cell", CELLS)
@torch.no_grad()
def test_nll_equals_token_by_token_logprobs(cell, head):
    model = tiny(cell, head=head)
    inputs, targets = random_batch()
    nll, _ = model(inputs, targets)

    state = None
    for t in range(inputs.shape[1]):
        logprobs, state = model.next_token_logprobs(inputs[:, t : t + 1], state)
        expected = -logprobs.gather(1, targets[:, t : t + 1]).squeeze(1)
        torch.testing.assert_close(nll[:, t], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@torch.no_grad()
def test_state_carried_over_two_chunks_equals_one_pass(cell):
    model = tiny(cell)
    inputs, targets = random_batch(steps=10)
    whole, whole_state = model(inputs, targets)
    first, state = model(inputs[:, :4], targets[:, :4])
    second, state = model(inputs[:, 4:], targets[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=1e-5)
    for carried, direct in zip(state if cell == "lstm" else (state,), whole_state if cell == "lstm" else (whole_state,)):
        torch.testing.assert_close(carried, direct, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_state_none_means_zeros():
    model = tiny("lstm")
    inputs, targets = random_batch()
    zeros = torch.zeros(2, 3, 8)
    torch.testing.assert_close(model(inputs, targets, (zeros, zeros))[0], model(inputs, targets)[0])


def test_rnn_relu_uses_relu():
    assert tiny("rnn_relu").rnn.nonlinearity == "relu"
    assert tiny("rnn_tanh").rnn.nonlinearity == "tanh"


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
@pytest.mark.parametrize("head", ["full", "adaptive"])
def test_float32_nll_and_gradients_under_bf16_autocast(cell, head):
    # oneDNN has no bfloat16 LSTM on many CPUs; the model must run it in float32 rather than crash.
    model = tiny(cell, head=head)
    inputs, targets = random_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll, _ = model(inputs, targets)
        logprobs, _ = model.next_token_logprobs(inputs)
    assert nll.dtype == torch.float32 and logprobs.dtype == torch.float32
    nll.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.rnn.parameters())


# ---------------------------------------------------------------------------------------------------------
# weight tying and parameter counts


def lstm_layer_params(input_size, hidden):
    return 4 * hidden * input_size + 4 * hidden * hidden + 2 * 4 * hidden  # W_ih, W_hh, b_ih, b_hh


def test_tied_weights_share_storage_and_are_counted_once():
    model = tiny("lstm", num_layers=1, embedding_size=4, hidden_size=4, tie_weights=True)
    assert model.head.weight is model.embedding.weight
    assert model.head.weight.data_ptr() == model.embedding.weight.data_ptr()
    embedding = VOCAB * 4
    output_bias = VOCAB
    assert model.param_counts() == {
        "total": embedding + lstm_layer_params(4, 4) + output_bias,  # 80 + 160 + 20
        "embedding_softmax": embedding + output_bias,
    }
    assert model.param_counts()["total"] == 260


def test_untied_counts_both_matrices():
    model = tiny("gru", num_layers=1, embedding_size=4, hidden_size=6)
    embedding, output = VOCAB * 4, 6 * VOCAB + VOCAB
    gru = 3 * 6 * 4 + 3 * 6 * 6 + 2 * 3 * 6
    assert model.param_counts() == {"total": embedding + gru + output, "embedding_softmax": embedding + output}


def test_adaptive_head_counts():
    model = tiny("lstm", num_layers=1, head="adaptive", adaptive_cutoffs=[5], adaptive_div_value=2.0)
    # head cluster: 5 frequent words + 1 tail token; tail: project 8 -> 4, then 4 -> 15 words; no biases
    head = 8 * (5 + 1) + 8 * 4 + 4 * 15
    embedding = VOCAB * 8
    assert model.param_counts() == {
        "total": embedding + lstm_layer_params(8, 8) + head,
        "embedding_softmax": embedding + head,
    }


def test_automatic_cutoffs_fit_small_and_large_vocabularies():
    assert resolve_adaptive_cutoffs(RNNLMConfig(vocab_size=50, head="adaptive")) == [25]
    assert resolve_adaptive_cutoffs(RNNLMConfig(vocab_size=5000, head="adaptive")) == [2000]
    assert resolve_adaptive_cutoffs(RNNLMConfig(vocab_size=30000, head="adaptive")) == [2000, 10000]
    tiny("lstm", head="adaptive", adaptive_cutoffs=[])  # builds with the automatic cutoff


# ---------------------------------------------------------------------------------------------------------
# initialisation


def init_model(scheme, cell="lstm"):
    torch.manual_seed(0)
    config = RNNLMConfig(vocab_size=50, cell=cell, embedding_size=64, hidden_size=64, num_layers=1,
                         init=scheme, init_range=0.05)
    return RNNLM(config)


def gate_blocks(model, name):
    return getattr(model.rnn, name).detach().split(64, dim=0)


@pytest.mark.parametrize("scheme", ["uniform", "xavier", "orthogonal", "kaiming"])
def test_embedding_and_output_are_uniform_under_every_scheme(scheme):
    model = init_model(scheme)
    for weight in (model.embedding.weight, model.head.weight):
        assert weight.abs().max() <= 0.05
        assert weight.std().item() == pytest.approx(0.05 / math.sqrt(3), rel=0.1)
    assert (model.head.bias == 0).all()


def test_uniform_init_statistics():
    model = init_model("uniform")
    for name in ("weight_ih_l0", "weight_hh_l0"):
        weight = getattr(model.rnn, name)
        assert weight.abs().max() <= 0.05
        assert weight.std().item() == pytest.approx(0.05 / math.sqrt(3), rel=0.05)
    assert (model.rnn.bias_ih_l0 == 0).all() and (model.rnn.bias_hh_l0 == 0).all()


def test_orthogonal_init_statistics():
    model = init_model("orthogonal")
    for gate in gate_blocks(model, "weight_hh_l0"):
        torch.testing.assert_close(gate @ gate.T, torch.eye(64), atol=1e-5, rtol=0)
    forget_bias = model.rnn.bias_ih_l0[64:128]
    assert (forget_bias == 1).all()
    assert model.rnn.bias_ih_l0.sum().item() == 64 and (model.rnn.bias_hh_l0 == 0).all()


def test_xavier_init_statistics():
    model = init_model("xavier")
    for gate in gate_blocks(model, "weight_ih_l0") + gate_blocks(model, "weight_hh_l0"):
        assert gate.std().item() == pytest.approx(math.sqrt(2 / (64 + 64)), rel=0.1)
    assert (model.rnn.bias_ih_l0[64:128] == 1).all()


def test_kaiming_init_statistics_and_no_forget_bias():
    model = init_model("kaiming", cell="rnn_relu")
    for gate in gate_blocks(model, "weight_hh_l0"):
        assert gate.std().item() == pytest.approx(math.sqrt(2 / 64), rel=0.1)
    assert (model.rnn.bias_ih_l0 == 0).all()
    lstm = init_model("kaiming")
    assert (lstm.rnn.bias_ih_l0 == 0).all()


# ---------------------------------------------------------------------------------------------------------
# learning


@pytest.mark.parametrize("cell, head", [("lstm", "full"), ("gru", "adaptive")])
def test_overfits_a_repeating_sequence(cell, head):
    torch.manual_seed(0)
    pattern = torch.randint(0, 12, (20,))  # repeats words, so the model has to use its context
    tokens = pattern.repeat(2).unsqueeze(0)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    model = RNNLM(RNNLMConfig(vocab_size=12, cell=cell, embedding_size=32, hidden_size=32, num_layers=1,
                              dropout=0.0, head=head))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(100):
        nll, _ = model(inputs, targets)
        loss = nll[:, 20:].mean()  # the first repetition cannot be predicted without having seen it
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


# ---------------------------------------------------------------------------------------------------------
# bad configs


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(tie_weights=True, embedding_size=8, hidden_size=16), "model.tie_weights"),
        (dict(tie_weights=True, head="adaptive"), "not supported with model.head=adaptive"),
        (dict(cell="lstn"), "model.cell"),
        (dict(init="he"), "model.init"),
        (dict(head="hierarchical"), "model.head"),
        (dict(dropout=1.5), "model.dropout"),
        (dict(num_layers=0), "model.num_layers"),
        (dict(head="adaptive", adaptive_cutoffs=[10, 5]), "strictly increasing"),
        (dict(head="adaptive", adaptive_cutoffs=[5, 5]), "strictly increasing"),
        (dict(head="adaptive", adaptive_cutoffs=[0, 5]), "strictly increasing"),
        (dict(vocab_size=20, head="adaptive", adaptive_cutoffs=[5, 20]), "below model.vocab_size=20"),
        (dict(vocab_size=20, hidden_size=8, head="adaptive", adaptive_cutoffs=[2, 4, 8, 16]), "0 dimensions"),
        (dict(adaptive_div_value=1.0), "model.adaptive_div_value"),
    ],
)
def test_bad_configs_raise(values, message):
    with pytest.raises(NlprnnError, match=message):
        RNNLMConfig(**values)


def test_model_checks_what_needs_the_vocabulary():
    with pytest.raises(NlprnnError, match="model.vocab_size"):
        RNNLM(RNNLMConfig())
    config = RNNLMConfig(head="adaptive", adaptive_cutoffs=[10])  # fine until the vocabulary is known
    config.vocab_size = 5
    with pytest.raises(NlprnnError, match="below model.vocab_size=5"):
        RNNLM(config)
