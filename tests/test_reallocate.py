"""Light RNN word re-allocation: the three solvers against each other and brute force, cost accumulation, input checks."""

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO
from scipy.optimize import linear_sum_assignment
from torch import nn

from nlprnn.errors import NlprnnError
from nlprnn.models import reallocate as realloc
from nlprnn.models import sparse_matching
from nlprnn.models.reallocate import accumulate_costs, reallocate_cells, reallocate_words, table_cost

SOLVERS = ("sparse", "dense", "greedy")


def random_instance(seed, vocab, rows, cols):
    """Zipf-scaled random costs and a random current table, the shape of what a training pass produces."""
    rng = np.random.default_rng(seed)
    counts = 1000.0 / np.arange(1, vocab + 1)
    row_costs = counts[:, None] * (math.log(rows) + rng.gamma(2.0, 0.5, size=(vocab, rows)))
    col_costs = counts[:, None] * (math.log(cols) + rng.gamma(2.0, 0.5, size=(vocab, cols)))
    cells = rng.permutation(rows * cols)[:vocab]
    return row_costs, col_costs, cells // cols, cells % cols


def table_shapes():
    """(seed, V, R, C): square tables, perfect squares, and rectangular tables with several empty cells."""
    rng = np.random.default_rng(123)
    shapes = []
    for seed in range(36):
        vocab = int(rng.integers(5, 41)) if seed % 4 else [9, 16, 25, 36][seed // 4 % 4]
        if seed % 3 == 0:
            rows = cols = math.ceil(math.sqrt(vocab))
        else:
            rows = int(rng.integers(2, 8))
            cols = math.ceil(vocab / rows) + int(rng.integers(0, 3))
        shapes.append((seed, vocab, rows, cols))
    # Tables much larger than the vocabulary (many empty cells).
    return shapes + [(40, 5, 8, 8), (41, 12, 6, 7), (42, 20, 9, 5)]


def optimum(row_costs, col_costs, allowed=None):
    """Exact optimum by linear_sum_assignment on the full matrix; `allowed` (V, R*C) restricts the edges."""
    full = (row_costs[:, :, None] + col_costs[:, None, :]).reshape(len(row_costs), -1)
    if allowed is not None:
        full = np.where(allowed, full, np.inf)
    words, cells = linear_sum_assignment(full)
    return full[words, cells].sum()


def candidate_mask(row_costs, col_costs, word_row, word_col, k, rule):
    """The sparse solver's candidate graph, written the slow obvious way."""
    vocab, rows = row_costs.shape
    cols = col_costs.shape[1]
    allowed = np.zeros((vocab, rows * cols), dtype=bool)
    extras = [(word_row, word_col)]
    if rule == "plain":
        row_prices, col_prices, grid = np.zeros(rows), np.zeros(cols), k
    else:
        row_prices, _, rows_held = sparse_matching._capacity_prices(row_costs, cols)
        col_prices, _, _ = sparse_matching._capacity_prices(col_costs, rows)
        grid = sparse_matching._GRID_WIDEN * k
        extras.append(sparse_matching._two_phase_table(col_costs, rows_held, rows, cols))
    for w in range(vocab):
        priced = {(i, j): row_costs[w, i] + row_prices[i] + col_costs[w, j] + col_prices[j]
                  for i in np.argsort(row_costs[w] + row_prices)[:grid]
                  for j in np.argsort(col_costs[w] + col_prices)[:grid]}
        for i, j in sorted(priced, key=priced.get)[:k * k]:
            allowed[w, i * cols + j] = True
        for extra_row, extra_col in extras:
            allowed[w, extra_row[w] * cols + extra_col[w]] = True
    return allowed


def check_bijection(new_row, new_col, vocab, rows, cols):
    assert new_row.shape == new_col.shape == (vocab,)
    assert new_row.min() >= 0 and new_row.max() < rows and new_col.min() >= 0 and new_col.max() < cols
    assert len(set(zip(new_row.tolist(), new_col.tolist()))) == vocab


# ------------------------------------------------------------------------------------------------
# A hand-made instance


# Three words in a 2 x 2 table. Cell costs row[i] + col[j]:
#   w0: (0,0) 3  (0,1) 1  (1,0) 7  (1,1) 5
#   w1: (0,0) 3  (0,1) 6  (1,0) 4  (1,1) 7
#   w2: (0,0) 7  (0,1) 6  (1,0) 4  (1,1) 3
# w0 and w2 take their cheapest cells (0,1) and (1,1); w1 then takes (0,0) at 3 rather than (1,0) at 4:
# optimum 1 + 3 + 3 = 7. The current table w0 (1,1), w1 (0,1), w2 (0,0) costs 5 + 6 + 7 = 18.
HAND_ROWS = np.array([[1.0, 5.0], [2.0, 3.0], [4.0, 1.0]])
HAND_COLS = np.array([[2.0, 0.0], [1.0, 4.0], [3.0, 2.0]])
HAND_CURRENT = (np.array([1, 0, 0]), np.array([1, 1, 0]))


def test_hand_made_optimum_is_what_brute_force_finds():
    costs = HAND_ROWS[:, :, None] + HAND_COLS[:, None, :]
    best = min(sum(costs[w][divmod(cell, 2)] for w, cell in enumerate(cells))
               for cells in itertools.permutations(range(4), 3))
    assert best == 7.0


@pytest.mark.parametrize("solver,candidates,rule", [
    ("sparse", 1, "plain"), ("sparse", 2, "plain"), ("sparse", 2, "priced"), ("dense", 8, "priced"),
    ("greedy", 8, "priced"),
])
def test_hand_made_2x2(solver, candidates, rule):
    new_row, new_col, stats = reallocate_cells(HAND_ROWS, HAND_COLS, *HAND_CURRENT, 2, 2, solver=solver,
                                               candidates=candidates, candidate_rule=rule)
    assert new_row.tolist() == [0, 0, 1] and new_col.tolist() == [1, 0, 1]
    assert stats["cost_before"] == 18.0 and stats["cost_after"] == 7.0 and stats["words_moved"] == 3
    assert stats["solver"] == solver and not stats["kept_current"] and stats["seconds"] >= 0


# ------------------------------------------------------------------------------------------------
# Sparse against the exact dense optimum


@pytest.mark.parametrize("seed,vocab,rows,cols", table_shapes())
def test_sparse_equals_dense_when_candidates_cover_every_cell(seed, vocab, rows, cols):
    row_costs, col_costs, word_row, word_col = random_instance(seed, vocab, rows, cols)
    best = optimum(row_costs, col_costs)
    sparse = reallocate_cells(row_costs, col_costs, word_row, word_col, rows, cols, candidates=max(rows, cols))
    plain = reallocate_cells(row_costs, col_costs, word_row, word_col, rows, cols, candidates=max(rows, cols),
                             candidate_rule="plain")
    assert plain[0].tolist() == sparse[0].tolist() and plain[1].tolist() == sparse[1].tolist()
    dense = reallocate_cells(row_costs, col_costs, word_row, word_col, rows, cols, solver="dense")
    for new_row, new_col, stats in (sparse, dense):
        check_bijection(new_row, new_col, vocab, rows, cols)
        assert stats["cost_after"] == pytest.approx(best, rel=1e-12)
        assert stats["cost_after"] <= stats["cost_before"]
    # Random real costs have one optimum: the two tables are the same.
    assert sparse[0].tolist() == dense[0].tolist() and sparse[1].tolist() == dense[1].tolist()


@pytest.mark.parametrize("seed,vocab,rows,cols", table_shapes())
@pytest.mark.parametrize("candidates", [1, 2])
@pytest.mark.parametrize("rule", ["priced", "plain"])
def test_sparse_with_few_candidates_is_exact_on_its_graph(seed, vocab, rows, cols, candidates, rule):
    row_costs, col_costs, word_row, word_col = random_instance(seed, vocab, rows, cols)
    new_row, new_col, stats = reallocate_cells(row_costs, col_costs, word_row, word_col, rows, cols,
                                               candidates=candidates, candidate_rule=rule)
    check_bijection(new_row, new_col, vocab, rows, cols)
    allowed = candidate_mask(row_costs, col_costs, word_row, word_col, candidates, rule)
    assert stats["edges"] == allowed.sum()
    assert stats["solver_cost"] == pytest.approx(optimum(row_costs, col_costs, allowed), rel=1e-12)
    assert optimum(row_costs, col_costs) <= stats["cost_after"] * (1 + 1e-12)
    assert stats["cost_after"] <= stats["cost_before"]
    assert allowed[np.arange(vocab), new_row * cols + new_col].all()


def crowded_instance(seed, vocab, side):
    """Every word ranks the rows (columns) alike, as rare words do: their cost vectors are the model's marginals."""
    rng = np.random.default_rng(seed)
    counts = 1000.0 / np.arange(1, vocab + 1)
    shared_rows, shared_cols = rng.gamma(1.0, 1.0, side), rng.gamma(1.0, 1.0, side)
    row_costs = counts[:, None] * (shared_rows + rng.gamma(2.0, 0.1, size=(vocab, side)))
    col_costs = counts[:, None] * (shared_cols + rng.gamma(2.0, 0.1, size=(vocab, side)))
    cells = rng.permutation(side * side)[:vocab]
    return row_costs, col_costs, cells // side, cells % side


def test_priced_candidates_beat_plain_ones_when_words_crowd_the_same_rows():
    # Plain candidates give every rare word the same k popular rows, taken by the frequent words: most rare
    # words can only stay where they are (plain ends near the current cost, 3x the optimum). Capacity prices
    # and the two-phase seed send them to cells they can get: within 15% of the optimum on this worst case
    # (identical preferences), and better than the official greedy.
    for seed in range(3):
        instance = crowded_instance(seed, 400, 20)
        best = optimum(instance[0], instance[1])
        plain = reallocate_cells(*instance, 20, 20, candidates=3, candidate_rule="plain")[2]
        priced = reallocate_cells(*instance, 20, 20, candidates=3)[2]
        greedy = reallocate_cells(*instance, 20, 20, solver="greedy")[2]
        assert best <= priced["cost_after"] <= priced["two_phase_cost"]
        assert priced["cost_after"] < greedy["cost_after"] and priced["cost_after"] < plain["cost_after"]
        assert priced["cost_after"] / best < 1.15 and plain["cost_after"] / best > 2


def test_capacity_prices_are_zero_without_competition():
    # One row per word's favourite, room for everyone: nobody is outbid, no row ever fills, prices stay 0.
    costs = np.array([[0.0, 5.0, 5.0], [5.0, 0.0, 5.0], [5.0, 5.0, 0.0]])
    assert sparse_matching._capacity_prices(costs, 2)[0].tolist() == [0.0, 0.0, 0.0]
    # Everyone wants row 0, which holds two: it ends up dearer than the margin of the third word.
    crowded = np.array([[0.0, 5.0, 5.0], [0.0, 4.0, 5.0], [0.0, 3.0, 5.0]])
    prices = sparse_matching._capacity_prices(crowded, 2)[0]
    assert 3.0 < prices[0] <= 4.5 and prices[1] == prices[2] == 0.0  # 4 + eps


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threads", [1, 2])
def test_the_auction_places_every_word_within_capacity_and_seeds_a_valid_table(monkeypatch, seed, threads):
    vocab, rows, cols = 90, 7, 13
    row_costs, col_costs, _, _ = crowded_instance(seed, vocab, 13)
    row_costs = row_costs[:, :rows]
    prices, rounds, rows_held = sparse_matching._capacity_prices(row_costs, cols)
    assert rounds > 0 and (prices >= 0).all() and np.bincount(rows_held, minlength=rows).max() <= cols
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)  # rows solved in a thread pool or not
    seed_row, seed_col = sparse_matching._two_phase_table(col_costs, rows_held, rows, cols)
    check_bijection(seed_row, seed_col, vocab, rows, cols)
    assert seed_row.tolist() == rows_held.tolist()
    for row in range(rows):  # each row's columns are its words' exact assignment
        words = np.flatnonzero(rows_held == row)
        exact = linear_sum_assignment(col_costs[words])
        assert col_costs[words, seed_col[words]].sum() == pytest.approx(col_costs[words][exact].sum())


def test_scipy_gets_integer_weights(monkeypatch):
    # scipy's LAPJVsp looped forever on the first crowded instance above with fractional float weights (its
    # path-length equality tests); rounded to integers, every sum it forms is exact.
    import scipy.sparse.csgraph

    seen = []
    real = scipy.sparse.csgraph.min_weight_full_bipartite_matching

    def spy(matrix):
        seen.append(matrix.data.copy())
        return real(matrix)

    monkeypatch.setattr(scipy.sparse.csgraph, "min_weight_full_bipartite_matching", spy)
    stats = reallocate_cells(*crowded_instance(0, 400, 20), 20, 20, candidates=3)[2]
    assert len(seen) == 1 and (seen[0] == np.rint(seen[0])).all() and seen[0].min() >= 1
    assert seen[0].max() * 400 * 2 < 2**53 and stats["weight_quantum"] > 0


@pytest.mark.parametrize("seed", range(3))
def test_banded_matching_descends_from_the_best_seed(monkeypatch, seed):
    # Large vocabularies are matched band by band; force it on a small one. Bands of 12 cells = 2 rows of 6,
    # then 2 columns, then 2 random rows, then 2 random columns.
    row_costs, col_costs, word_row, word_col = random_instance(seed, 33, 6, 6)
    whole = reallocate_cells(row_costs, col_costs, word_row, word_col, 6, 6, candidates=2)[2]
    monkeypatch.setattr(sparse_matching, "_GLOBAL_MAX_WORDS", 10)
    monkeypatch.setattr(sparse_matching, "_BAND_CELLS", 12)
    new_row, new_col, stats = reallocate_cells(row_costs, col_costs, word_row, word_col, 6, 6, candidates=2)
    check_bijection(new_row, new_col, 33, 6, 6)
    assert stats["bands"] == [3, 3, 3, 3]
    assert stats["cost_after"] <= min(stats["cost_before"], stats["two_phase_cost"])
    assert stats["cost_after"] >= whole["cost_after"] * (1 - 1e-12)
    allowed = candidate_mask(row_costs, col_costs, word_row, word_col, 2, "priced")
    assert allowed[np.arange(33), new_row * 6 + new_col].all()


def test_one_band_is_the_whole_graph(monkeypatch):
    row_costs, col_costs, word_row, word_col = random_instance(7, 30, 6, 6)
    whole = reallocate_cells(row_costs, col_costs, word_row, word_col, 6, 6, candidates=2)
    monkeypatch.setattr(sparse_matching, "_GLOBAL_MAX_WORDS", 10)
    banded = reallocate_cells(row_costs, col_costs, word_row, word_col, 6, 6, candidates=2)
    assert banded[2]["bands"] == [1, 1, 1, 1]
    assert banded[0].tolist() == whole[0].tolist() and banded[1].tolist() == whole[1].tolist()


def test_every_square_up_formulation_is_exercised():
    # The matching is posed square three ways (no empty cell / dummy words / one extra row per cell): the
    # random shapes above must reach all three, else one of them is untested.
    seen = set()
    for seed, vocab, rows, cols in table_shapes():
        row_costs, col_costs, word_row, word_col = random_instance(seed, vocab, rows, cols)
        for k in (1, 2, max(rows, cols)):
            seen.add(reallocate_cells(row_costs, col_costs, word_row, word_col, rows, cols, candidates=k)[2]
                     ["formulation"])
    assert seen == {"square", "dummies", "empty-slots"}


# ------------------------------------------------------------------------------------------------
# Properties every solver has


@pytest.mark.parametrize("solver", SOLVERS)
def test_every_solver_returns_a_bijection_that_never_costs_more(solver):
    for seed, vocab, rows, cols in table_shapes():
        row_costs, col_costs, word_row, word_col = random_instance(seed, vocab, rows, cols)
        new_row, new_col, stats = reallocate_cells(row_costs, col_costs, word_row, word_col, rows, cols,
                                                   solver=solver, candidates=3)
        check_bijection(new_row, new_col, vocab, rows, cols)
        assert stats["cost_before"] == pytest.approx(table_cost(row_costs, col_costs, word_row, word_col))
        assert stats["cost_after"] == pytest.approx(table_cost(row_costs, col_costs, new_row, new_col))
        assert stats["cost_after"] <= stats["cost_before"]
        assert stats["words_moved"] == sum(
            (r, c) != (r0, c0) for r, c, r0, c0 in zip(new_row, new_col, word_row, word_col))


@pytest.mark.parametrize("solver", SOLVERS)
def test_an_optimal_table_is_returned_unchanged(solver):
    for seed, vocab, rows, cols in table_shapes()[:12]:
        row_costs, col_costs, word_row, word_col = random_instance(seed, vocab, rows, cols)
        best_row, best_col, _ = reallocate_cells(row_costs, col_costs, word_row, word_col, rows, cols,
                                                 solver="dense")
        new_row, new_col, stats = reallocate_cells(row_costs, col_costs, best_row, best_col, rows, cols,
                                                   solver=solver)
        assert new_row.tolist() == best_row.tolist() and new_col.tolist() == best_col.tolist()
        assert stats["words_moved"] == 0 and stats["cost_after"] == stats["cost_before"]


def test_equal_cost_tables_do_not_move_words():
    # All costs equal: every table is optimal, and moving words would gain nothing.
    ones = np.ones((6, 3))
    word_row, word_col = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 2, 0, 1, 2])
    for solver in SOLVERS:
        new_row, new_col, stats = reallocate_cells(ones, ones, word_row, word_col, 3, 3, solver=solver)
        assert stats["kept_current"] and stats["words_moved"] == 0
        assert stats["kept_reason"] == "no improvement over the current table"


# ------------------------------------------------------------------------------------------------
# The official implementation's greedy


# Two words, three rows of one cell each. Row costs w0 = [1, 2, 100], w1 = [1, 50, 50] (column costs 0).
# Both propose row 0 first. Priority = (sum of the costs not yet proposed) / (rows left after this one - 1):
# w0: (2 + 100) / 1 = 102, w1: (50 + 50) / 1 = 100. w0 pops first and takes row 0; w1, refused, proposes
# row 1 (priority 0: one row left) and takes it. Greedy 1 + 50 = 51; optimum w1 row 0, w0 row 1 = 3.
GREEDY_ROWS = np.array([[1.0, 2.0, 100.0], [1.0, 50.0, 50.0]])
GREEDY_COLS = np.zeros((2, 1))


def test_greedy_follows_the_official_priority():
    new_row, new_col, stats = reallocate_cells(GREEDY_ROWS, GREEDY_COLS, np.array([2, 1]), np.array([0, 0]),
                                               3, 1, solver="greedy")
    assert new_row.tolist() == [0, 1] and stats["cost_after"] == 51.0 and stats["cost_before"] == 150.0
    sparse = reallocate_cells(GREEDY_ROWS, GREEDY_COLS, np.array([2, 1]), np.array([0, 0]), 3, 1)
    assert sparse[0].tolist() == [1, 0] and sparse[2]["cost_after"] == 3.0


def test_greedy_worse_than_the_current_table_keeps_it():
    current = (np.array([1, 0]), np.array([0, 0]))  # the optimum, 3
    new_row, new_col, stats = reallocate_cells(GREEDY_ROWS, GREEDY_COLS, *current, 3, 1, solver="greedy")
    assert new_row.tolist() == [1, 0] and stats["words_moved"] == 0
    assert stats["kept_current"] and stats["solver_cost"] == 51.0 and stats["cost_after"] == 3.0
    assert stats["kept_reason"] == "the solver's table costs more than the current one"


def test_greedy_past_its_sorted_prefix(monkeypatch):
    # Every word prefers row 0 and column 0: most words are refused by their first choices and must go on
    # past the presorted prefix, where their order is computed on demand. The result must not change.
    rng = np.random.default_rng(5)
    vocab, rows, cols = 30, 6, 6
    row_costs = rng.uniform(1, 2, size=(vocab, rows)) + np.arange(rows) * 0.1
    col_costs = rng.uniform(1, 2, size=(vocab, cols)) + np.arange(cols) * 0.1
    current = (np.arange(vocab) // cols, np.arange(vocab) % cols)
    whole = realloc._greedy_table(row_costs, col_costs, rows, cols)
    monkeypatch.setattr(realloc, "_GREEDY_PREFIX", 1)
    short = realloc._greedy_table(row_costs, col_costs, rows, cols)
    assert whole[0].tolist() == short[0].tolist() and whole[1].tolist() == short[1].tolist()
    check_bijection(*short, vocab, rows, cols)
    new_row, new_col, stats = reallocate_cells(row_costs, col_costs, *current, rows, cols, solver="greedy")
    check_bijection(new_row, new_col, vocab, rows, cols)
    assert stats["cost_after"] <= stats["cost_before"]


# ------------------------------------------------------------------------------------------------
# Inputs


def test_torch_float32_inputs_give_the_numpy_result():
    row_costs, col_costs, word_row, word_col = random_instance(3, 20, 5, 5)
    row32, col32 = row_costs.astype(np.float32), col_costs.astype(np.float32)
    from_numpy = reallocate_cells(row32, col32, word_row, word_col, 5, 5)
    from_torch = reallocate_cells(torch.from_numpy(row32), torch.from_numpy(col32), torch.from_numpy(word_row),
                                  torch.from_numpy(word_col), 5, 5)
    assert from_torch[0].tolist() == from_numpy[0].tolist() and from_torch[1].tolist() == from_numpy[1].tolist()
    assert from_torch[2]["cost_after"] == from_numpy[2]["cost_after"]


@pytest.mark.parametrize("change,message", [
    (dict(row_costs=np.ones((3, 3))), r"row_costs has shape \(3, 3\), expected \(V, num_rows\) = \(3, 2\)"),
    (dict(col_costs=np.ones((4, 2))), r"col_costs has shape \(4, 2\), expected"),
    (dict(row_costs=np.ones(6)), "row_costs must be a 2-D"),
    (dict(word_row=np.array([1, 0])), r"word_row has shape \(2,\), expected \(3,\)"),
    (dict(word_col=np.array([0.0, 1.0, 0.0])), "word_col must hold integers"),
    (dict(word_row=np.array([2, 0, 0])), r"word_row\[0\] = 2 is outside \[0, 2\)"),
    (dict(word_row=np.array([0, 0, 0]), word_col=np.array([1, 0, 1])),
     r"not a bijection: words 0 and 2 both sit in cell \(0, 1\)"),
    (dict(num_rows=1, row_costs=np.ones((3, 1)), word_row=np.array([0, 0, 0])), "3 words do not fit a 1 x 2 table"),
    (dict(solver="hungarian"), "unknown solver 'hungarian'; expected one of sparse, dense, greedy"),
    (dict(candidates=0), "candidates must be a positive integer"),
    (dict(candidate_rule="best"), "unknown candidate_rule 'best'; expected one of priced, plain"),
    (dict(num_cols=0), "num_cols must be a positive integer"),
    (dict(row_costs=np.array([[1.0, np.nan], [1.0, 1.0], [1.0, 1.0]])), r"row_costs\[0, 1\] is nan"),
    (dict(col_costs=np.array([["a", "b"]] * 3)), "col_costs must hold float32 or float64 costs"),
])
def test_bad_inputs_are_named(change, message):
    args = dict(row_costs=HAND_ROWS, col_costs=HAND_COLS, word_row=HAND_CURRENT[0], word_col=HAND_CURRENT[1],
                num_rows=2, num_cols=2)
    args.update(change)
    with pytest.raises(NlprnnError, match=message):
        reallocate_cells(**args)


def test_dense_refuses_large_problems(monkeypatch):
    monkeypatch.setattr(realloc, "DENSE_MAX_ENTRIES", 10)
    with pytest.raises(NlprnnError, match="solver 'dense' needs a 3 x 4 cost matrix.*use solver='sparse'"):
        reallocate_cells(HAND_ROWS, HAND_COLS, *HAND_CURRENT, 2, 2, solver="dense")


# ------------------------------------------------------------------------------------------------
# Cost accumulation


class FakeLightRNN(nn.Module):
    """Deterministic stand-in for the Light RNN model's `word_log_probs`, with a state that matters.

    The state is a running sum of the input ids per stream; the logits depend on it, so forgetting to carry
    it from batch to batch changes the costs.
    """

    def __init__(self, vocab, rows, cols):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.row_table = nn.Parameter(torch.randn(vocab, rows, generator=generator))
        self.col_table = nn.Parameter(torch.randn(vocab, cols, generator=generator))
        self.dropout = nn.Dropout(0.5)
        self.seen_states, self.seen_training = [], []

    def word_log_probs(self, inputs, targets, state):
        self.seen_states.append(None if state is None else state.clone())
        self.seen_training.append(self.training)
        if state is None:
            state = torch.zeros(inputs.shape[0])
        carry = state[:, None] + torch.cumsum(inputs.float(), 1)
        row_logits = self.dropout(self.row_table[inputs]) * torch.cos(carry)[..., None]
        col_logits = self.col_table[targets] + torch.sin(carry)[..., None]  # the column pass sees the true row
        return row_logits.log_softmax(-1), col_logits.log_softmax(-1), carry[:, -1]


def lm_batches(vocab, count=4, batch=3, bptt=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    stream = torch.randint(0, vocab, (batch, count * bptt + 1), generator=generator)
    return [(stream[:, i * bptt:(i + 1) * bptt], stream[:, i * bptt + 1:(i + 1) * bptt + 1]) for i in range(count)]


def naive_costs(model, batches, rows, cols, vocab, carry=True):
    """One token at a time, the way published ports do it: the reference for the batched version."""
    row_costs, col_costs = torch.zeros(vocab, rows, dtype=torch.float64), torch.zeros(vocab, cols, dtype=torch.float64)
    state = None
    with torch.no_grad():
        for inputs, targets in batches:
            row_logp, col_logp, state = model.word_log_probs(inputs, targets, state if carry else None)
            for b in range(targets.shape[0]):
                for t in range(targets.shape[1]):
                    row_costs[targets[b, t]] -= row_logp[b, t].double()
                    col_costs[targets[b, t]] -= col_logp[b, t].double()
    return row_costs, col_costs


def test_accumulate_costs_equals_a_per_token_loop_and_carries_the_state():
    vocab, rows, cols = 11, 4, 3
    model = FakeLightRNN(vocab, rows, cols).eval()
    batches = lm_batches(vocab)
    expected = naive_costs(model, batches, rows, cols, vocab)
    model.train()
    model.seen_states, model.seen_training = [], []
    row_costs, col_costs = accumulate_costs(model, iter(batches), rows, cols, vocab)
    assert row_costs.dtype == col_costs.dtype == torch.float64
    assert row_costs.shape == (vocab, rows) and col_costs.shape == (vocab, cols)
    torch.testing.assert_close(row_costs, expected[0], rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(col_costs, expected[1], rtol=1e-12, atol=1e-9)
    assert not row_costs.requires_grad
    # Dropout off during the pass, and the model back in training mode after it.
    assert model.seen_training == [False] * len(batches) and model.training
    # The state handed to batch n + 1 is the one batch n returned (the running sum of the inputs so far),
    # and forgetting it gives other costs.
    assert model.seen_states[0] is None
    for n in range(1, len(batches)):
        torch.testing.assert_close(model.seen_states[n], sum(b[0].float().sum(1) for b in batches[:n]))
    forgetful = naive_costs(model.eval(), batches, rows, cols, vocab, carry=False)
    assert not torch.allclose(row_costs, forgetful[0])


def test_accumulate_costs_counts_every_occurrence():
    # Costs are sums over occurrences: a word repeated inside one batch adds up (no lost index updates).
    vocab, rows, cols = 5, 2, 2
    model = FakeLightRNN(vocab, rows, cols)
    inputs = torch.tensor([[1, 2, 3]])
    targets = torch.tensor([[4, 4, 4]])
    row_costs, _ = accumulate_costs(model, [(inputs, targets)], rows, cols, vocab)
    row_logp, _, _ = model.eval().word_log_probs(inputs, targets, None)
    torch.testing.assert_close(row_costs[4], -row_logp[0].double().sum(0))
    assert row_costs[:4].abs().sum() == 0


class MaskingFakeLightRNN(FakeLightRNN):
    """Like the real model: empty cells get log-prob -inf unless `mask_empty=False`."""

    def word_log_probs(self, inputs, targets, state, mask_empty=True):
        row_logp, col_logp, state = super().word_log_probs(inputs, targets, state)
        if mask_empty:
            row_logp, col_logp = row_logp.clone(), col_logp.clone()
            row_logp[..., -1] = col_logp[..., -1] = -math.inf
        return row_logp, col_logp, state


def test_accumulate_costs_asks_for_unmasked_log_probs():
    vocab, rows, cols = 11, 4, 3
    masking, plain = MaskingFakeLightRNN(vocab, rows, cols), FakeLightRNN(vocab, rows, cols)
    masked_costs = accumulate_costs(masking, lm_batches(vocab), rows, cols, vocab)
    plain_costs = accumulate_costs(plain, lm_batches(vocab), rows, cols, vocab)
    assert torch.isfinite(masked_costs[0]).all() and torch.isfinite(masked_costs[1]).all()
    torch.testing.assert_close(masked_costs[0], plain_costs[0])


def test_accumulate_costs_names_bad_batches():
    vocab, rows, cols = 5, 2, 2
    model = FakeLightRNN(vocab, rows, cols)
    with pytest.raises(NlprnnError, match=r"batch 0: target ids must lie in \[0, 5\), got min 0, max 7"):
        accumulate_costs(model, [(torch.tensor([[0, 1]]), torch.tensor([[0, 7]]))], rows, cols, vocab)
    with pytest.raises(NlprnnError, match=r"batch 0: word_log_probs returned shapes \(1, 2, 2\) and \(1, 2, 2\), "
                                          r"expected \(1, 2, 3\)"):
        accumulate_costs(model, [(torch.tensor([[0, 1]]), torch.tensor([[0, 1]]))], 3, cols, vocab)
    with pytest.raises(NlprnnError, match="expected input_ids and targets of one shape"):
        accumulate_costs(model, [(torch.tensor([[0, 1]]), torch.tensor([[0]]))], rows, cols, vocab)


def test_accumulated_costs_feed_the_reallocation():
    vocab, rows, cols = 11, 4, 3
    model = FakeLightRNN(vocab, rows, cols)
    row_costs, col_costs = accumulate_costs(model, lm_batches(vocab), rows, cols, vocab)
    cells = np.arange(vocab)
    new_row, new_col, stats = reallocate_cells(row_costs, col_costs, cells // cols, cells % cols, rows, cols)
    check_bijection(new_row, new_col, vocab, rows, cols)
    assert stats["cost_after"] <= stats["cost_before"]


# ------------------------------------------------------------------------------------------------
# Benchmark script


@pytest.mark.slow
def test_reallocation_benchmark_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "lightrnn_reallocation.py"), "--sizes", "150", "400",
         "--solvers", "sparse", "greedy", "dense", "--candidates", "4", "--reference-max", "150",
         "--output", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads((tmp_path / "bench.json").read_text())
    runs = {(r["vocab"], r["solver"]): r for r in figures["runs"]}
    assert set(runs) == {(150, "sparse"), (150, "greedy"), (150, "dense"), (400, "sparse"), (400, "greedy")}
    assert runs[150, "sparse"]["reference"] == "dense" and runs[400, "greedy"]["reference"] == "sparse"
    assert runs[400, "sparse"]["cost_vs_reference"] == 1.0
    for run in runs.values():
        assert run["cost_after"] <= run["cost_before"] and run["peak_rss_bytes"] > 0
    assert "cost / reference" in out.stdout


@pytest.mark.slow
def test_reallocation_benchmark_times_out_the_solver_not_the_cost_generation(tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "lightrnn_reallocation.py"), "--sizes", "60000",
         "--solvers", "sparse", "--timeout", "1", "--output", str(tmp_path / "bench.json")],
        capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": ""},
    )
    assert out.returncode == 1 and "solver timed out after 1 s (costs generated in" in out.stdout
    (failure,) = json.loads((tmp_path / "bench.json").read_text())["failures"]
    assert failure["error"] == "timeout" and failure["generate_seconds"] > 0


def test_reallocate_words_takes_and_gives_a_word_table():
    from nlprnn.models import build_model

    torch.manual_seed(0)
    model = build_model("lightrnn", vocab_size=11, embedding_size=4, hidden_size=6, num_layers=1,
                        table_init="frequency")
    tokens = torch.randint(0, 11, (2, 25), generator=torch.Generator().manual_seed(3))
    batches = [(tokens[:, i:i + 4], tokens[:, i + 1:i + 5]) for i in range(0, 20, 4)]
    row_costs, col_costs = accumulate_costs(model, batches, model.num_rows, model.num_cols, 11)
    before = model.table.word_row.clone(), model.table.word_col.clone()
    new_table, stats = reallocate_words(row_costs, col_costs, model.table, solver="dense")
    assert torch.equal(model.table.word_row, before[0]) and torch.equal(model.table.word_col, before[1])
    assert (new_table.num_rows, new_table.num_cols, new_table.vocab_size) == (4, 4, 11)
    assert stats["words_moved"] == model.table.moved_words(new_table)
    assert table_cost(row_costs.numpy(), col_costs.numpy(), new_table.word_row.numpy(),
                      new_table.word_col.numpy()) == pytest.approx(stats["cost_after"])
    assert stats["cost_after"] <= stats["cost_before"]
    model.table.assign(new_table.word_row, new_table.word_col)
    model.table.check()
