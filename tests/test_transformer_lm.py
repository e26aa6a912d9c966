"""TransformerLM: the LM contract, causality, token memory across chunks, tying, init, overfitting."""

import math

import pytest
import torch

from nlprnn.errors import NlprnnError
from nlprnn.models.transformer import TransformerLM, TransformerLMConfig

VOCAB = 13


@pytest.fixture(autouse=True)
def one_thread():
    # Models this small run fastest on one thread; on a busy 2-core machine, extra threads spin against
    # other processes and slow the tests down many times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(**overrides) -> TransformerLM:
    torch.manual_seed(0)
    values = dict(vocab_size=VOCAB, d_model=8, n_heads=2, n_layers=2, d_ff=16, dropout=0.0, context_size=16)
    values.update(overrides)
    return TransformerLM(TransformerLMConfig(**values)).eval()


def random_batch(batch=2, steps=6, seed=1):
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (batch, steps + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_shapes_and_dtypes(positions):
    model = tiny(positions=positions)
    inputs, targets = random_batch()
    nll, state = model(inputs, targets)
    assert nll.shape == (2, 6) and nll.dtype == torch.float32
    assert state is None  # memory=0: chunks are independent

    logprobs, state = model.next_token_logprobs(inputs)
    assert logprobs.shape == (2, VOCAB) and logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs.exp().sum(-1), torch.ones(2))
    assert torch.equal(state, inputs)


def test_float32_nll_under_autocast():
    model = tiny()
    inputs, targets = random_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll, _ = model(inputs, targets)
        logprobs, _ = model.next_token_logprobs(inputs)
    assert nll.dtype == torch.float32 and logprobs.dtype == torch.float32


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
@torch.no_grad()
def test_nll_equals_token_by_token_logprobs(positions):
    model = tiny(positions=positions)
    inputs, targets = random_batch(steps=8)
    nll, _ = model(inputs, targets)

    state = None
    for t in range(inputs.shape[1]):
        logprobs, state = model.next_token_logprobs(inputs[:, t : t + 1], state)
        expected = -logprobs.gather(1, targets[:, t : t + 1]).squeeze(1)
        torch.testing.assert_close(nll[:, t], expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(state, inputs)  # everything fits in context_size - 1 = 15 tokens


@torch.no_grad()
def test_changing_a_future_token_leaves_earlier_nll_unchanged():
    model = tiny()
    inputs, targets = random_batch(steps=10)
    nll, _ = model(inputs, targets)
    changed = inputs.clone()
    changed[:, 6] = (changed[:, 6] + 1) % VOCAB
    changed_nll, _ = model(changed, targets)
    torch.testing.assert_close(changed_nll[:, :6], nll[:, :6], atol=1e-6, rtol=0)
    assert not torch.allclose(changed_nll[:, 6:], nll[:, 6:])


@torch.no_grad()
def test_memory_carries_context_across_chunks():
    model = tiny(memory=5)
    inputs, targets = random_batch(steps=10)
    whole, _ = model(inputs, targets)
    first, state = model(inputs[:, :5], targets[:, :5])
    assert torch.equal(state, inputs[:, :5])
    second, state = model(inputs[:, 5:], targets[:, 5:], state)
    assert torch.equal(state, inputs[:, 5:])  # the last `memory` tokens
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_without_memory_chunks_are_independent():
    model = tiny()
    inputs, targets = random_batch(steps=10)
    _, state = model(inputs[:, :5], targets[:, :5])
    second, _ = model(inputs[:, 5:], targets[:, 5:], state)
    alone, _ = model(inputs[:, 5:], targets[:, 5:])
    torch.testing.assert_close(second, alone)


@torch.no_grad()
def test_context_is_cut_to_context_size():
    model = tiny(context_size=8, memory=4)
    inputs, targets = random_batch(steps=6)
    long_state = torch.randint(0, VOCAB, (2, 10))
    nll, state = model(inputs, targets, long_state)
    # Only the last 8 tokens fit: 2 of the state, then the 6 new ones.
    cut, _ = model(inputs, targets, long_state[:, -2:])
    torch.testing.assert_close(nll, cut)
    assert torch.equal(state, inputs[:, -4:])

    # Generation goes on past the context and carries at most context_size - 1 tokens.
    state = None
    for t in range(12):
        logprobs, state = model.next_token_logprobs(torch.full((2, 1), t % VOCAB), state)
        assert state.shape == (2, min(t + 1, 7))
        assert torch.isfinite(logprobs).all()

    with pytest.raises(NlprnnError, match="model.context_size=8"):
        model(*random_batch(steps=9))


# ---------------------------------------------------------------------------------------------------------
# weight tying, parameter counts, init


def test_tied_weights_share_storage_and_are_counted_once():
    model = tiny(n_layers=1, context_size=6)
    assert model.lm_head.weight is model.token_embedding.weight
    tokens, positions = VOCAB * 8, 6 * 8
    attention = 3 * 8 * 8 + 3 * 8 + 8 * 8 + 8  # in_proj (q, k, v) and out_proj, with biases
    feed_forward = 8 * 16 + 16 + 16 * 8 + 8
    layer_norms = 2 * (8 + 8)
    final_norm = 8 + 8
    total = tokens + positions + attention + feed_forward + layer_norms + final_norm
    assert model.param_counts() == {"total": total, "embedding_softmax": tokens + positions}
    assert total == 768


def test_untied_and_sinusoidal_counts():
    tied = tiny(n_layers=1).param_counts()
    untied = tiny(n_layers=1, tie_weights=False).param_counts()
    assert untied["total"] - tied["total"] == VOCAB * 8  # the output matrix has no bias
    assert untied["embedding_softmax"] - tied["embedding_softmax"] == VOCAB * 8

    sinusoidal = tiny(n_layers=1, positions="sinusoidal")
    assert sinusoidal.param_counts()["total"] == tied["total"] - 16 * 8
    assert "position_table" not in sinusoidal.state_dict()  # recomputed from the config, not saved


def test_init_statistics():
    model = TransformerLM(TransformerLMConfig(vocab_size=500, d_model=64, n_heads=4, n_layers=2, d_ff=128))
    assert model.token_embedding.weight.std().item() == pytest.approx(0.02, rel=0.05)
    block = model.blocks[0]
    assert block.linear1.weight.std().item() == pytest.approx(0.02, rel=0.05)
    # projections into the residual stream are scaled by 1 / sqrt(2 * n_layers)
    assert block.linear2.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert block.self_attn.out_proj.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert (block.linear1.bias == 0).all() and (block.self_attn.in_proj_bias == 0).all()
    assert (block.norm1.weight == 1).all() and (model.final_norm.weight == 1).all()


def test_sinusoidal_table_matches_the_formula():
    table = tiny(positions="sinusoidal").position_table
    assert table.shape == (16, 8)
    torch.testing.assert_close(table[3, 2], torch.tensor(math.sin(3 / 10000 ** (2 / 8))))
    torch.testing.assert_close(table[3, 3], torch.tensor(math.cos(3 / 10000 ** (2 / 8))))


# ---------------------------------------------------------------------------------------------------------
# learning and bad configs


def test_overfits_a_repeating_sequence():
    torch.manual_seed(0)
    pattern = torch.randint(0, VOCAB, (20,))
    tokens = pattern.repeat(2).unsqueeze(0)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    model = tiny(d_model=32, d_ff=64, n_layers=1, context_size=40)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(100):
        nll, _ = model(inputs, targets)
        loss = nll[:, 20:].mean()  # the first repetition cannot be predicted without having seen it
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


@pytest.mark.parametrize(
    "values, message",
    [
        (dict(d_model=10, n_heads=4), "model.n_heads"),
        (dict(memory=256, context_size=256), "model.memory"),
        (dict(memory=-1), "model.memory"),
        (dict(positions="rotary"), "model.positions"),
        (dict(dropout=-0.1), "model.dropout"),
        (dict(n_layers=0), "model.n_layers"),
    ],
)
def test_bad_configs_raise(values, message):
    with pytest.raises(NlprnnError, match=message):
        TransformerLMConfig(**values)


def test_model_needs_a_vocabulary_size():
    with pytest.raises(NlprnnError, match="model.vocab_size"):
        TransformerLM(TransformerLMConfig())
