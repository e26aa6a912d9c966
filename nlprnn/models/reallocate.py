"""Light RNN word re-allocation: per-word row/column costs from one no-grad pass, then a new word table.

Light RNN (Li et al., NIPS 2016, arXiv 1610.09893) puts the V words in the cells of an R x C table and
predicts a word as (row, column). After a round of training the table is re-learnt: one pass over the
training data sums, for every word w and every row i, `row_costs[w, i] = sum -log P_row(i | context)` over
the occurrences of w (`col_costs` likewise), and the new table is the minimum-weight perfect matching of
words to cells where placing w in (i, j) costs `row_costs[w, i] + col_costs[w, j]`.

`accumulate_costs` makes the two matrices (batched `index_add_`, no per-token Python loop);
`reallocate_words` solves the matching with one of three solvers:

- "sparse" (default): exact on a candidate graph, solved by scipy's sparse LAPJV. Each word may take
  k * k candidate cells, its current cell (which guarantees that a perfect matching exists and that the
  result never costs more than the current table) and, with the default candidate_rule="priced", its cell
  in a two-phase table. With k >= max(R, C) the graph is complete and the result is the exact optimum.
  candidate_rule="plain" takes the k x k cells of the word's k cheapest rows and k cheapest columns. That
  fails when words crowd the same rows, as rare words do (their costs are sums of the model's marginals, so
  they all rank the popular rows first): their candidates are the cells the frequent words take, and they
  can only stay put (2x the optimum at V = 10k on the benchmark's synthetic costs). "priced" first runs an
  auction on each side (words -> rows holding C words each, words -> columns holding R each) whose prices
  make popular rows expensive, picks the k * k cells cheapest at cost + prices, and adds the table that
  keeps the auction's rows and solves each row's columns exactly (within 0.5% of the optimum at V = 10k).
  Up to _GLOBAL_MAX_WORDS (50k) words the graph is matched at once; scipy's LAPJVsp grows about
  quadratically on it (100k words: 170 s), so larger vocabularies are matched band by band (exact within
  each band of ~16k cells, a descent overall: 2% above the whole-graph optimum at 100k, 5x faster).
- "dense": `scipy.optimize.linear_sum_assignment` on the full V x (R*C) matrix; the exact reference, small V.
- "greedy": the official implementation's two-phase heuristic (rows by priority queue, then columns within
  each row), kept as a comparison point; see `_greedy_table` for exactly what it does.

Whatever the solver, a table that does not lower the surrogate cost is discarded and the current one kept.
"""

from __future__ import annotations

import heapq
import inspect
import time

import numpy as np
import torch

from nlprnn.errors import NlprnnError
from nlprnn.models.common import detach_state
from nlprnn.models.sparse_matching import _CHUNK_ENTRIES, _smallest, sparse_table, table_cost
from nlprnn.models.word_table import WordTable

SOLVERS = ("sparse", "dense", "greedy")
CANDIDATE_RULES = ("priced", "plain")

# linear_sum_assignment needs the whole float64 V x (R*C) matrix (1.6 GB at this size) and its O(n^3) worst
# case already takes minutes there; past it only the sparse solver is practical.
DENSE_MAX_ENTRIES = 200_000_000

# How many of its cheapest rows (columns) each word's greedy preference list holds up front; a word that is
# refused by all of them gets its full order computed on demand (rare: capacity is only short at the end).
_GREEDY_PREFIX = 16


# ------------------------------------------------------------------------------------------------
# Costs


def accumulate_costs(model, batches, num_rows: int, num_cols: int, vocab_size: int,
                     device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Sum each word's row and column costs over `batches` in one no-grad pass of a Light RNN model.

    `batches` yields `(input_ids, targets)` LongTensors of shape (B, T), consecutive chunks of the same
    streams: the recurrent state is carried from one batch to the next (detached), as in training. For each
    batch the model's `word_log_probs(inputs, targets, state)` returns `(row_logp, col_logp, state)` of
    shapes (B, T, R) and (B, T, C): log P_row(i | context) for every row i, and log P_col(j | context, true
    row) for every column j, at every position, unmasked (`mask_empty=False` is passed when the method takes
    it). Returns `(row_costs, col_costs)`, float64 tensors of shape
    (V, R) and (V, C) on `device`, with `row_costs[w, i] = sum over positions whose target is w of
    -row_logp[..., i]`. float64 because a frequent word's sum runs over millions of tokens, where float32
    loses the differences between rows that the matching compares.

    The model must already be on `device`; it runs in eval mode (dropout off: the costs should measure the
    model the table is chosen for) and is put back in the mode it was in. Summing the costs over processes
    (all_reduce) is the caller's business.
    """
    row_costs = torch.zeros(vocab_size, num_rows, dtype=torch.float64, device=device)
    col_costs = torch.zeros(vocab_size, num_cols, dtype=torch.float64, device=device)
    # A model that masks its empty cells (log-prob -inf) must not here: every word would get an infinite cost
    # for them, and none could move into a cell that is empty now. Unmasked, a position's log-probs shift by
    # one constant over the cells, which leaves the best matching unchanged.
    takes_mask = "mask_empty" in inspect.signature(model.word_log_probs).parameters
    options = {"mask_empty": False} if takes_mask else {}
    was_training = model.training
    model.eval()
    state = None
    try:
        with torch.no_grad():
            for index, (inputs, targets) in enumerate(batches):
                inputs = torch.as_tensor(inputs).to(device)
                targets = torch.as_tensor(targets).to(device)
                if inputs.shape != targets.shape or inputs.dim() != 2:
                    raise NlprnnError(f"accumulate_costs: batch {index}: expected input_ids and targets of one "
                                      f"shape (B, T), got {tuple(inputs.shape)} and {tuple(targets.shape)}")
                if targets.numel():
                    low, high = torch.aminmax(targets)
                    if int(low) < 0 or int(high) >= vocab_size:
                        raise NlprnnError(f"accumulate_costs: batch {index}: target ids must lie in "
                                          f"[0, {vocab_size}), got min {int(low)}, max {int(high)}")
                row_logp, col_logp, state = model.word_log_probs(inputs, targets, state, **options)
                expected = (tuple(targets.shape) + (num_rows,), tuple(targets.shape) + (num_cols,))
                if (tuple(row_logp.shape), tuple(col_logp.shape)) != expected:
                    raise NlprnnError(f"accumulate_costs: batch {index}: word_log_probs returned shapes "
                                      f"{tuple(row_logp.shape)} and {tuple(col_logp.shape)}, expected "
                                      f"{expected[0]} and {expected[1]} (num_rows={num_rows}, num_cols={num_cols})")
                flat = targets.reshape(-1)
                # index_add_ sums repeated targets correctly (unlike `costs[flat] -= ...`), in one kernel.
                row_costs.index_add_(0, flat, row_logp.reshape(-1, num_rows).to(torch.float64), alpha=-1)
                col_costs.index_add_(0, flat, col_logp.reshape(-1, num_cols).to(torch.float64), alpha=-1)
                state = detach_state(state)
    finally:
        model.train(was_training)
    return row_costs, col_costs


# ------------------------------------------------------------------------------------------------
# Re-allocation


def reallocate_words(row_costs, col_costs, table: WordTable, solver: str = "sparse", candidates: int = 8,
                     candidate_rule: str = "priced") -> tuple[WordTable, dict]:
    """The word table minimising sum_w row_costs[w, row(w)] + col_costs[w, col(w)], and the stats of the search.

    `row_costs` (V, R) and `col_costs` (V, C) are what `accumulate_costs` returns (numpy arrays or tensors);
    `table` is the current table (left unchanged). Returns a new CPU `WordTable`, the current placement when
    the solver found nothing cheaper, and the stats of `reallocate_cells`.
    """
    word_row, word_col, stats = reallocate_cells(row_costs, col_costs, table.word_row, table.word_col,
                                                 table.num_rows, table.num_cols, solver, candidates, candidate_rule)
    return WordTable(table.vocab_size, table.num_rows, table.num_cols, torch.from_numpy(word_row),
                     torch.from_numpy(word_col)), stats


def reallocate_cells(row_costs, col_costs, word_row, word_col, num_rows: int, num_cols: int,
                     solver: str = "sparse", candidates: int = 8,
                     candidate_rule: str = "priced") -> tuple[np.ndarray, np.ndarray, dict]:
    """`reallocate_words` on plain arrays: the cheapest word-to-cell bijection the solver finds.

    `row_costs` (V, R) and `col_costs` (V, C) are numpy arrays or torch tensors (float32 or float64, any
    device); `word_row`, `word_col` (V,) give the current cell of each word, distinct cells of the
    `num_rows` x `num_cols` table. Returns `(new_word_row, new_word_col, stats)`, int64 arrays and a dict
    with solver, cost_before, cost_after (of the returned table), solver_cost (of the solver's own table),
    kept_current (True when the solver's table was not cheaper, so the current one is returned; the reason
    is in kept_reason), words_moved, seconds, candidates, and for "sparse": candidate_rule, edges (word-cell
    pairs in the candidate graph), formulation (how the matching was posed to scipy), matrix_edges,
    weight_quantum, the seconds of each phase and, when priced, auction_rounds and two_phase_cost.
    `candidates` (k) and `candidate_rule` ("priced" or "plain") shape the sparse solver's graph: see the
    module docstring. Memory at V = 1M, k = 8: the inputs, plus about 3 GB.
    """
    start = time.perf_counter()
    if solver not in SOLVERS:
        raise NlprnnError(f"reallocate: unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}")
    if isinstance(candidates, bool) or not isinstance(candidates, (int, np.integer)) or candidates < 1:
        raise NlprnnError(f"reallocate: candidates must be a positive integer, got {candidates!r}")
    if candidate_rule not in CANDIDATE_RULES:
        raise NlprnnError(f"reallocate: unknown candidate_rule {candidate_rule!r}; expected one of "
                          f"{', '.join(CANDIDATE_RULES)}")
    num_rows, num_cols = _check_table_size(num_rows, num_cols)
    row_costs = _cost_array(row_costs, "row_costs")
    col_costs = _cost_array(col_costs, "col_costs")
    vocab = row_costs.shape[0]
    if row_costs.shape != (vocab, num_rows):
        raise NlprnnError(f"reallocate: row_costs has shape {row_costs.shape}, expected (V, num_rows) = "
                          f"({vocab}, {num_rows})")
    if col_costs.shape != (vocab, num_cols):
        raise NlprnnError(f"reallocate: col_costs has shape {col_costs.shape}, expected (V, num_cols) = "
                          f"({vocab}, {num_cols}) with V = {vocab} taken from row_costs")
    if vocab == 0:
        raise NlprnnError("reallocate: row_costs and col_costs have no words (V = 0)")
    if vocab > num_rows * num_cols:
        raise NlprnnError(f"reallocate: {vocab} words do not fit a {num_rows} x {num_cols} table "
                          f"({num_rows * num_cols} cells)")
    _check_finite(row_costs, "row_costs")
    _check_finite(col_costs, "col_costs")
    word_row = _index_array(word_row, "word_row", vocab, num_rows)
    word_col = _index_array(word_col, "word_col", vocab, num_cols)
    _check_bijection(word_row, word_col, num_rows, num_cols)

    stats: dict = {"solver": solver, "candidates": int(candidates)}
    if solver == "sparse":
        stats["candidate_rule"] = candidate_rule
        new_row, new_col = sparse_table(row_costs, col_costs, word_row, word_col, num_rows, num_cols,
                                         int(candidates), candidate_rule == "priced", stats)
    elif solver == "dense":
        new_row, new_col = _dense_table(row_costs, col_costs, num_rows, num_cols)
    else:
        new_row, new_col = _greedy_table(row_costs, col_costs, num_rows, num_cols)
    _assert_bijection(new_row, new_col, vocab, num_rows, num_cols)

    cost_before = table_cost(row_costs, col_costs, word_row, word_col)
    solver_cost = table_cost(row_costs, col_costs, new_row, new_col)
    # Rounding: sums of the same per-word costs in another order may differ in the last bits, so an equal-cost
    # table must not count as an improvement (it would move words for nothing).
    tolerance = 1e-12 * (_abs_total(row_costs, word_row) + _abs_total(col_costs, word_col))
    kept = not solver_cost < cost_before - tolerance
    stats["kept_current"] = kept
    if kept:
        stats["kept_reason"] = ("the solver's table costs more than the current one" if solver_cost > cost_before
                                + tolerance else "no improvement over the current table")
        new_row, new_col = word_row.copy(), word_col.copy()
    stats["cost_before"] = cost_before
    stats["solver_cost"] = solver_cost
    stats["cost_after"] = cost_before if kept else solver_cost
    stats["words_moved"] = int(np.count_nonzero((new_row != word_row) | (new_col != word_col)))
    stats["seconds"] = time.perf_counter() - start
    return new_row, new_col, stats


# ------------------------------------------------------------------------------------------------
# Solvers


def _dense_table(row_costs, col_costs, num_rows, num_cols):
    """Exact optimum by scipy's linear_sum_assignment on the full V x (R*C) cost matrix."""
    from scipy.optimize import linear_sum_assignment

    vocab = row_costs.shape[0]
    entries = vocab * num_rows * num_cols
    if entries > DENSE_MAX_ENTRIES:
        raise NlprnnError(f"reallocate: solver 'dense' needs a {vocab} x {num_rows * num_cols} cost matrix "
                          f"({entries:,} entries, {entries * 8 / 2**30:.1f} GiB) and is limited to "
                          f"{DENSE_MAX_ENTRIES:,} entries; use solver='sparse', exact on the candidate graph")
    full = (row_costs.astype(np.float64)[:, :, None] + col_costs.astype(np.float64)[:, None, :])
    _, cells = linear_sum_assignment(full.reshape(vocab, num_rows * num_cols))
    cells = cells.astype(np.int64)
    return cells // num_cols, cells % num_cols


def _greedy_table(row_costs, col_costs, num_rows, num_cols):
    """The official implementation's greedy (CNTK Examples/Text/LightRNN, pyreallocate.cpp), generalised to R x C.

    Phase 1, rows. Every word lists the rows by ascending row cost and keeps `rest`, the sum of the costs of
    the rows it has not proposed yet (the official code leaves this sum uninitialised; here it starts at the
    sum of all its row costs). A word proposes its next row with priority `rest / (n - 1)`, where n is how
    many rows it has still not proposed after this one, and 0 when n <= 1 (the official formula, divisor
    included): roughly the mean cost of its fall-back rows, so words that would lose most by being refused
    (frequent words, whose costs are sums over many tokens) choose first. A max-priority queue pops
    proposals; a row takes the word if it holds fewer than C words, otherwise the word proposes its next
    row. Phase 2, columns, one row at a time: the words of the row make the same kind of proposals over
    columns (priority from their column costs) and a column takes the word if its cell is still empty.
    Ties pop the lower word id first (std::priority_queue leaves them unspecified). The current table is
    not consulted: the caller keeps it if this one costs more. Python heap, a few microseconds a proposal.
    """
    row_phase = _GreedyPreferences(row_costs)
    rows = [[] for _ in range(num_rows)]
    heap = [row_phase.propose(word) for word in range(row_costs.shape[0])]
    heapq.heapify(heap)
    while heap:
        _, word, row = heapq.heappop(heap)
        if len(rows[row]) < num_cols:
            rows[row].append(word)
        else:
            heapq.heappush(heap, row_phase.propose(word))

    col_phase = _GreedyPreferences(col_costs)
    new_row = np.empty(row_costs.shape[0], dtype=np.int64)
    new_col = np.empty(row_costs.shape[0], dtype=np.int64)
    for row, words in enumerate(rows):
        taken = [False] * num_cols
        heap = [col_phase.propose(word) for word in words]
        heapq.heapify(heap)
        while heap:
            _, word, col = heapq.heappop(heap)
            if taken[col]:
                heapq.heappush(heap, col_phase.propose(word))
            else:
                taken[col] = True
                new_row[word], new_col[word] = row, col
    return new_row, new_col


class _GreedyPreferences:
    """Each word's choices in ascending cost and its running sum of not-yet-proposed costs (greedy helper).

    Only the _GREEDY_PREFIX cheapest choices are sorted up front (a full argsort would be V x R int64, 8 GB
    at V = 1M); a word that runs past them gets its full order computed then.
    """

    def __init__(self, costs):
        self.costs = costs
        vocab, self.width = costs.shape
        depth = min(_GREEDY_PREFIX, self.width)
        self.prefix = np.empty((vocab, depth), dtype=np.int32)
        chunk = max(1, _CHUNK_ENTRIES // self.width)
        for lo in range(0, vocab, chunk):
            block = costs[lo:lo + chunk]
            part = np.sort(_smallest(block, depth), axis=1)  # index order first, so ties go to the lower index
            order = np.argsort(np.take_along_axis(block, part, axis=1), axis=1, kind="stable")
            self.prefix[lo:lo + chunk] = np.take_along_axis(part, order, axis=1)
        self.rest = costs.sum(axis=1, dtype=np.float64)
        self.proposed = np.zeros(vocab, dtype=np.int64)
        self.full: dict[int, np.ndarray] = {}

    def propose(self, word: int) -> tuple[float, int, int]:
        """The word's next choice as a heap entry (-priority, word, choice)."""
        step = int(self.proposed[word])
        if step < self.prefix.shape[1]:
            choice = int(self.prefix[word, step])
        else:
            if word not in self.full:
                # The prefix, then the other choices by cost: argpartition may have broken ties at the prefix's
                # edge differently from a full sort, and no choice may be proposed twice or skipped.
                rest = np.setdiff1d(np.arange(self.width), self.prefix[word])
                rest = rest[np.argsort(self.costs[word, rest], kind="stable")]
                self.full[word] = np.concatenate([self.prefix[word], rest])
            choice = int(self.full[word][step])
        self.proposed[word] = step + 1
        self.rest[word] -= self.costs[word, choice]
        left = self.width - step - 1
        priority = float(self.rest[word]) / (left - 1) if left > 1 else 0.0
        return (-priority, word, choice)


# ------------------------------------------------------------------------------------------------
# Input checks


def _check_table_size(num_rows, num_cols):
    for name, value in (("num_rows", num_rows), ("num_cols", num_cols)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise NlprnnError(f"reallocate: {name} must be a positive integer, got {value!r}")
    if num_rows * num_cols >= 2**31:
        raise NlprnnError(f"reallocate: a {num_rows} x {num_cols} table has more than 2**31 cells")
    return int(num_rows), int(num_cols)


def _to_numpy(value, name):
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.dtype in (torch.float16, torch.bfloat16):
            value = value.float()
        return value.cpu().numpy()
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise NlprnnError(f"reallocate: {name} is not an array: {exc}") from None


def _cost_array(value, name):
    array = _to_numpy(value, name)
    if array.ndim != 2:
        raise NlprnnError(f"reallocate: {name} must be a 2-D (V, R or C) array, got shape {array.shape}")
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    elif array.dtype.kind in "iu":
        array = array.astype(np.float64)
    elif array.dtype not in (np.float32, np.float64):
        raise NlprnnError(f"reallocate: {name} must hold float32 or float64 costs, got dtype {array.dtype}")
    return array


def _check_finite(costs, name):
    chunk = max(1, _CHUNK_ENTRIES // max(1, costs.shape[1]))
    for lo in range(0, costs.shape[0], chunk):
        bad = ~np.isfinite(costs[lo:lo + chunk])
        if bad.any():
            word, column = np.argwhere(bad)[0]
            raise NlprnnError(f"reallocate: {name}[{lo + word}, {column}] is {costs[lo + word, column]}; "
                              f"costs must be finite")


def _index_array(value, name, vocab, limit):
    array = _to_numpy(value, name)
    if array.shape != (vocab,):
        raise NlprnnError(f"reallocate: {name} has shape {array.shape}, expected ({vocab},): one entry per "
                          f"word of the cost matrices")
    if array.dtype.kind not in "iu":
        raise NlprnnError(f"reallocate: {name} must hold integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    outside = np.flatnonzero((array < 0) | (array >= limit))
    if len(outside):
        word = outside[0]
        raise NlprnnError(f"reallocate: {name}[{word}] = {array[word]} is outside [0, {limit})")
    return array


def _check_bijection(word_row, word_col, num_rows, num_cols):
    cells = word_row * num_cols + word_col
    order = np.argsort(cells, kind="stable")
    same = np.flatnonzero(cells[order][1:] == cells[order][:-1])
    if len(same):
        first, second = order[same[0]], order[same[0] + 1]
        raise NlprnnError(f"reallocate: the current table is not a bijection: words {first} and {second} "
                          f"both sit in cell ({word_row[first]}, {word_col[first]})")


def _assert_bijection(new_row, new_col, vocab, num_rows, num_cols):
    """The solver's table must put every word in its own cell of the table: a failure here is a bug."""
    assert new_row.shape == (vocab,) and new_col.shape == (vocab,)
    assert ((new_row >= 0) & (new_row < num_rows) & (new_col >= 0) & (new_col < num_cols)).all()
    assert len(np.unique(new_row * num_cols + new_col)) == vocab, "re-allocation put two words in one cell"


def _abs_total(costs, chosen):
    return float(np.abs(costs[np.arange(len(chosen)), chosen]).sum(dtype=np.float64))
