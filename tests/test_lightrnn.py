"""LightRNN: word table and masking, the state convention, a naive reference, checkpoints, counts, overfitting."""

import math

import pytest
import torch
import torch.nn.functional as F

from nlprnn.errors import NlprnnError
from nlprnn.hub import from_pretrained, save_pretrained
from nlprnn.models import LightRNN, LightRNNConfig, build_model
from nlprnn.models.lightrnn import WordTable, table_shape

CELLS = ["lstm", "gru"]


def tiny(vocab=13, cell="lstm", **overrides) -> LightRNN:
    torch.manual_seed(0)
    # A wide init: with the default 0.1, two layers damp the input so much that feeding the wrong row before
    # a column prediction changes its log-prob by less than the tolerance, and the tests could not tell.
    values = dict(vocab_size=vocab, cell=cell, embedding_size=6, hidden_size=8, num_layers=2, dropout=0.0,
                  init_range=0.8)
    values.update(overrides)
    return build_model("lightrnn", **values).eval()


def stream(vocab, batch=3, steps=6, seed=1):
    """Contiguous LM data: targets are the inputs shifted by one."""
    tokens = torch.randint(0, vocab, (batch, steps + 1), generator=torch.Generator().manual_seed(seed))
    return tokens[:, :-1], tokens[:, 1:]


def unrelated(vocab, batch=3, steps=6, seed=2):
    """Inputs and targets drawn independently: x[t+1] is not y[t], so the model cannot reuse its run."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, steps), generator=generator), torch.randint(
        0, vocab, (batch, steps), generator=generator
    )


def occupied(model):
    return {(int(model.table.word_row[w]), int(model.table.word_col[w])) for w in range(model.config.vocab_size)}


# ---------------------------------------------------------------------------------------------------------
# the table


def test_table_shapes():
    assert table_shape(16, "square") == (4, 4) and table_shape(16, "rectangle") == (4, 4)
    assert table_shape(13, "square") == (4, 4) and table_shape(13, "rectangle") == (4, 4)
    assert table_shape(11, "square") == (4, 4) and table_shape(11, "rectangle") == (3, 4)
    assert table_shape(1, "square") == (1, 1)
    assert table_shape(793_471, "square") == (891, 891)  # One Billion Word
    model = tiny(11, table_shape="rectangle")
    assert (model.num_rows, model.num_cols) == (3, 4)
    assert model.row_embedding.weight.shape == (3, 6) and model.col_head.out_features == 4


def test_frequency_and_random_initial_tables():
    model = tiny(11, table_init="frequency")
    assert model.table.word_row.tolist() == [i // 4 for i in range(11)]
    assert model.table.word_col.tolist() == [i % 4 for i in range(11)]
    assert model.table.cell_word.tolist() == list(range(11)) + [-1] * 5

    first, again, other = (tiny(11, table_seed=seed) for seed in (0, 0, 1))
    assert torch.equal(first.table.cell_word, again.table.cell_word)
    assert not torch.equal(first.table.cell_word, other.table.cell_word)
    for model in (first, other):
        model.table.check()
        assert sorted(model.table.cell_word.tolist()) == [-1] * 5 + list(range(11))


def test_word_table_on_its_own():
    table = WordTable(5, 2, 3)  # word i in cell i, row-major
    assert table.word_row.tolist() == [0, 0, 0, 1, 1] and table.cell_word.tolist() == [0, 1, 2, 3, 4, -1]
    moved = table.copy()
    moved.assign([0, 0, 0, 1, 1], [0, 1, 2, 2, 1])  # word 3 moves into the empty cell
    assert table.moved_words(moved) == 1 and table.word_col.tolist() == [0, 1, 2, 0, 1]
    row_mask, col_mask = moved.masks()
    assert row_mask.tolist() == [0.0, 0.0] and col_mask[1].tolist() == [float("-inf"), 0.0, 0.0]
    with pytest.raises(NlprnnError, match="7 words do not fit a 2 x 3 table"):
        WordTable(7, 2, 3)
    with pytest.raises(NlprnnError, match="table init: expected one of random, frequency"):
        WordTable.initial(5, init="sorted")
    with pytest.raises(NlprnnError, match="table shape"):
        table_shape(5, "circle")


def test_set_table_rejects_non_bijections():
    model = tiny(5)  # 3 x 3 table
    rows, cols = torch.tensor([0, 0, 1, 1, 2]), torch.tensor([0, 1, 0, 1, 0])
    model.table.assign(rows, cols)
    assert model.table.cell_word.tolist() == [0, 1, -1, 2, 3, -1, 4, -1, -1]
    before = model.table.cell_word.clone()
    with pytest.raises(NlprnnError, match=r"words \[1, 4\] share cell \(0, 1\)"):
        model.table.assign([0, 0, 1, 1, 0], [0, 1, 0, 1, 1])
    with pytest.raises(NlprnnError, match=r"word_row must lie in \[0, 3\)"):
        model.table.assign([0, 0, 1, 1, 3], cols)
    with pytest.raises(NlprnnError, match=r"word_col must have shape \(5,\)"):
        model.table.assign(rows, cols[:4])
    with pytest.raises(NlprnnError, match="integers"):
        model.table.assign(rows.float(), cols)
    assert torch.equal(model.table.cell_word, before)  # a rejected table changes nothing


def test_check_table_catches_corrupt_buffers_and_checkpoints():
    model = tiny(5)
    model.table.check()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.table.cell_word[model.table.cell_word.tolist().index(-1)] = 0  # word 0 in two cells
    with pytest.raises(NlprnnError, match="cell_word does not match"):
        model.table.check()
    # Loading runs the same check, so a corrupt checkpoint fails at load time.
    with pytest.raises(NlprnnError, match="cell_word does not match"):
        tiny(5).load_state_dict({**state, "table.cell_word": model.table.cell_word})
    state["table.word_row"][1], state["table.word_col"][1] = state["table.word_row"][0], state["table.word_col"][0]
    with pytest.raises(NlprnnError, match="share cell"):
        tiny(5).load_state_dict(state)


# ---------------------------------------------------------------------------------------------------------
# probabilities


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize(
    "vocab, shape, init",
    [(16, "square", "random"), (13, "square", "random"), (11, "square", "random"),
     (13, "rectangle", "random"), (11, "rectangle", "frequency"), (10, "square", "frequency")],
)
@torch.no_grad()
def test_next_word_distribution_sums_to_one_over_real_words(cell, vocab, shape, init):
    model = tiny(vocab, cell, table_shape=shape, table_init=init)
    inputs, targets = stream(vocab)
    logprobs, _ = model.next_token_logprobs(inputs)
    assert logprobs.shape == (3, vocab) and logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs.exp().sum(-1), torch.ones(3))

    # Empty cells get no mass: no row without words, no empty column of the target's row.
    row_logp, col_logp, _ = model.word_log_probs(inputs, targets)
    cells = occupied(model)
    empty_rows = [i for i in range(model.num_rows) if not any((i, j) in cells for j in range(model.num_cols))]
    if vocab == 10:
        assert empty_rows == [3]  # frequency order in a 4 x 4 table leaves the last row empty
    assert (row_logp[..., empty_rows] == float("-inf")).all()
    torch.testing.assert_close(row_logp.exp().sum(-1), torch.ones(3, 6))
    for b in range(3):
        for t in range(6):
            r = int(model.table.word_row[targets[b, t]])
            for j in range(model.num_cols):
                assert (col_logp[b, t, j] == float("-inf")) == ((r, j) not in cells)


def naive_nll(model, inputs, targets):
    """The Light RNN probability written out plainly, one half-step and one word at a time."""
    rows, cols, vocab = model.num_rows, model.num_cols, model.config.vocab_size
    cell_of = {w: (int(model.table.word_row[w]), int(model.table.word_col[w])) for w in range(vocab)}
    used = set(cell_of.values())
    nll = torch.zeros(targets.shape)
    for b in range(inputs.shape[0]):
        state = None
        for t in range(inputs.shape[1]):
            r, c = cell_of[int(inputs[b, t])]
            _, state = model.rnn(model.row_embedding.weight[r].view(1, 1, -1), state)
            out, state = model.rnn(model.col_embedding.weight[c].view(1, 1, -1), state)
            row_logits = model.row_head(out[0, 0])
            for i in range(rows):
                if not any((i, j) in used for j in range(cols)):
                    row_logits[i] = float("-inf")
            target_row, target_col = cell_of[int(targets[b, t])]
            # The TRUE row of the target is fed before its column is predicted; this step is not kept.
            out, _ = model.rnn(model.row_embedding.weight[target_row].view(1, 1, -1), state)
            col_logits = model.col_head(out[0, 0])
            for j in range(cols):
                if (target_row, j) not in used:
                    col_logits[j] = float("-inf")
            nll[b, t] = -(F.log_softmax(row_logits, -1)[target_row] + F.log_softmax(col_logits, -1)[target_col])
    return nll


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch", [stream, unrelated])
@torch.no_grad()
def test_nll_equals_a_naive_word_by_word_computation(cell, batch):
    model = tiny(11, cell)
    inputs, targets = batch(11, batch=2, steps=5)
    nll, _ = model(inputs, targets)
    assert nll.shape == (2, 5) and nll.dtype == torch.float32
    torch.testing.assert_close(nll, naive_nll(model, inputs, targets), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch", [stream, unrelated])
@torch.no_grad()
def test_nll_equals_token_by_token_logprobs(cell, batch):
    # Pins the state convention: the state after consuming a word is the one next_token_logprobs predicts from.
    model = tiny(13, cell)
    inputs, targets = batch(13)
    nll, state_after = model(inputs, targets)

    state = None
    for t in range(inputs.shape[1]):
        logprobs, state = model.next_token_logprobs(inputs[:, t : t + 1], state)
        expected = -logprobs.gather(1, targets[:, t : t + 1]).squeeze(1)
        torch.testing.assert_close(nll[:, t], expected, atol=1e-5, rtol=1e-5)
    for carried, direct in zip(state if cell == "lstm" else (state,), state_after if cell == "lstm" else (state_after,)):
        torch.testing.assert_close(carried, direct, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
@torch.no_grad()
def test_state_carried_over_two_chunks_equals_one_pass(cell):
    model = tiny(13, cell)
    inputs, targets = stream(13, steps=10)
    whole, whole_state = model(inputs, targets)
    first, state = model(inputs[:, :4], targets[:, :4])
    second, state = model(inputs[:, 4:], targets[:, 4:], state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, atol=1e-5, rtol=1e-5)
    for carried, direct in zip(state if cell == "lstm" else (state,), whole_state if cell == "lstm" else (whole_state,)):
        assert carried.shape == (2, 3, 8)
        torch.testing.assert_close(carried, direct, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_lm_streams_take_two_fused_rnn_calls():
    # Contiguous data reuses the interleaved run for the column predictions; only the last needs one more step.
    model = tiny(13)
    calls = []
    model.rnn.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[1]))
    model(*stream(13, steps=7))
    assert calls == [14, 1]
    calls.clear()
    model(*unrelated(13, steps=7))  # the word-at-a-time fallback
    assert calls == [2, 1] * 7
    calls.clear()
    model.next_token_logprobs(stream(13, steps=7)[0])
    assert calls == [14, 1]


@torch.no_grad()
def test_word_log_probs_agree_with_forward():
    model = tiny(11, table_shape="rectangle")
    inputs, targets = stream(11)
    row_logp, col_logp, state = model.word_log_probs(inputs, targets)
    assert row_logp.shape == (3, 6, 3) and col_logp.shape == (3, 6, 4) and row_logp.dtype == torch.float32
    nll, forward_state = model(inputs, targets)
    from_parts = -(row_logp.gather(-1, model.table.word_row[targets][..., None])
                   + col_logp.gather(-1, model.table.word_col[targets][..., None])).squeeze(-1)
    assert torch.equal(nll, from_parts)
    assert all(torch.equal(a, b) for a, b in zip(state, forward_state))


@torch.no_grad()
def test_unmasked_costs_are_finite_and_shift_used_cells_by_one_constant():
    # Re-allocation's costs: finite for empty cells, and on used cells the masked ones plus a per-position
    # constant, so a word's summed costs move by one constant and the best matching does not change.
    model = tiny(10, table_init="frequency")  # row 3 empty; cells (2, 2) and (2, 3) empty
    inputs, targets = stream(10)
    row_masked, col_masked, _ = model.word_log_probs(inputs, targets)
    row_all, col_all, _ = model.word_log_probs(inputs, targets, mask_empty=False)
    assert torch.isfinite(row_all).all() and torch.isfinite(col_all).all()
    assert torch.isinf(row_masked).any() and torch.isinf(col_masked).any()
    row_shift = (row_masked - row_all)[..., :3]
    torch.testing.assert_close(row_shift, row_shift[..., :1].expand_as(row_shift))
    in_row_2 = torch.nonzero(model.table.word_row[targets] == 2, as_tuple=True)
    assert in_row_2[0].numel() > 0
    for b, t in zip(*in_row_2):
        col_shift = (col_masked - col_all)[b, t, :2]
        torch.testing.assert_close(col_shift, col_shift[:1].expand(2))
    for b, t in zip(*torch.nonzero(model.table.word_row[targets] < 2, as_tuple=True)):
        torch.testing.assert_close(col_masked[b, t], col_all[b, t])  # full rows: nothing masked


@torch.no_grad()
def test_swapping_two_words_cells_swaps_their_log_probs():
    model = tiny(13)
    context = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])  # neither swapped word (7, 11) is in the context
    before, _ = model.next_token_logprobs(context)
    rows, cols = model.table.word_row.clone(), model.table.word_col.clone()
    rows[[7, 11]], cols[[7, 11]] = rows[[11, 7]], cols[[11, 7]]
    model.table.assign(rows, cols)
    after, _ = model.next_token_logprobs(context)
    assert torch.equal(after[:, 7], before[:, 11]) and torch.equal(after[:, 11], before[:, 7])
    others = [w for w in range(13) if w not in (7, 11)]
    assert torch.equal(after[:, others], before[:, others])


# ---------------------------------------------------------------------------------------------------------
# training details


@pytest.mark.parametrize("cell", CELLS)
def test_gradients_are_finite_with_empty_rows_and_cells(cell):
    model = tiny(10, cell, table_init="frequency").train()  # 4 x 4 table: row 3 and cells (2, 2..3) empty
    inputs, targets = stream(10)
    nll, state = model(inputs, targets)
    assert all(s.requires_grad for s in (state if cell == "lstm" else (state,)))  # not detached
    logprobs, _ = model.next_token_logprobs(inputs)
    (nll.mean() - logprobs.mean()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_float32_outputs_and_gradients_under_bf16_autocast():
    model = tiny(13)
    inputs, targets = stream(13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll, _ = model(inputs, targets)
        logprobs, _ = model.next_token_logprobs(inputs)
    assert nll.dtype == torch.float32 and logprobs.dtype == torch.float32
    nll.mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.rnn.parameters())


def test_overfits_a_repeating_sequence():
    torch.manual_seed(0)
    vocab = 13
    model = build_model("lightrnn", vocab_size=vocab, embedding_size=16, hidden_size=32, num_layers=1, dropout=0.0)
    tokens = torch.tensor([3, 7, 1, 12, 5, 9, 0, 4] * 5).view(1, -1).repeat(2, 1)
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(80):
        optimizer.zero_grad()
        loss = model(inputs, targets)[0].mean()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.2 * math.log(vocab)


# ---------------------------------------------------------------------------------------------------------
# registry, config, counts, checkpoints


def test_checkpoint_round_trip_restores_the_table(tmp_path):
    model = tiny(11, "gru")
    permutation = torch.randperm(11, generator=torch.Generator().manual_seed(5))
    model.table.assign(model.table.word_row[permutation], model.table.word_col[permutation])
    save_pretrained(model, tmp_path / "ckpt")
    loaded, _ = from_pretrained(tmp_path / "ckpt")
    assert isinstance(loaded, LightRNN) and loaded.config == model.config
    for name in ("word_row", "word_col", "cell_word"):
        assert torch.equal(getattr(loaded.table, name), getattr(model.table, name))
    assert not torch.equal(loaded.table.cell_word, tiny(11, "gru").table.cell_word)  # not just the default table again
    inputs, targets = stream(11)
    assert torch.equal(model(inputs, targets)[0], loaded(inputs, targets)[0])
    assert torch.equal(model.next_token_logprobs(inputs)[0], loaded.next_token_logprobs(inputs)[0])


def test_param_counts_by_hand():
    model = tiny(13, num_layers=1, embedding_size=3, hidden_size=5)  # 4 x 4 table
    embeddings = 4 * 3 + 4 * 3
    heads = (5 * 4 + 4) + (5 * 4 + 4)
    lstm = 4 * 5 * 3 + 4 * 5 * 5 + 2 * 4 * 5  # W_ih, W_hh, b_ih, b_hh
    assert model.param_counts() == {"total": embeddings + heads + lstm, "embedding_softmax": embeddings + heads}
    assert model.param_counts() == {"total": 272, "embedding_softmax": 72}

    gru = tiny(11, "gru", num_layers=1, embedding_size=3, hidden_size=5, table_shape="rectangle")  # 3 x 4
    embeddings, heads = 3 * 3 + 4 * 3, (5 * 3 + 3) + (5 * 4 + 4)
    assert gru.param_counts() == {"total": embeddings + heads + 3 * 5 * 3 + 3 * 5 * 5 + 2 * 3 * 5,
                                  "embedding_softmax": embeddings + heads}


@pytest.mark.parametrize(
    "values, message",
    [
        ({"cell": "rnn_tanh"}, "model.cell: expected one of lstm, gru"),
        ({"table_shape": "circle"}, "model.table_shape"),
        ({"table_init": "alphabetical"}, "model.table_init"),
        ({"init": "zeros"}, "model.init"),
        ({"hidden_size": 0}, "model.hidden_size"),
        ({"dropout": 1.0}, "model.dropout"),
        ({"tie_weights": True}, "unknown config key model.tie_weights"),
        ({"vocab_size": 0}, "model.vocab_size"),
    ],
)
def test_bad_config_raises(values, message):
    with pytest.raises(NlprnnError, match=message):
        build_model("lightrnn", **{"vocab_size": 10, **values})


def test_build_from_a_config_instance():
    config = LightRNNConfig(vocab_size=9, cell="gru", embedding_size=4, hidden_size=4)
    model = build_model("lightrnn", config)
    assert model.config is config and model.model_name == "lightrnn"
    assert isinstance(model.rnn, torch.nn.GRU) and (model.num_rows, model.num_cols) == (3, 3)
