"""The sparse exact re-allocation solver: a minimum-weight matching of words to cells on a candidate graph.

Used by `nlprnn.models.reallocate.reallocate_words(..., solver="sparse")`; see its module docstring for what
the candidates are and why. Everything here works on numpy arrays: costs (V, R) and (V, C), and a table as
(word_row, word_col) int64 arrays.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

# Rows of the cost matrices handled at once when scanning them (argpartition, finiteness checks): bounds
# the int64/float64 temporaries to about 64 MiB however large V is.
_CHUNK_ENTRIES = 1 << 23

# Up to this many words the sparse solver matches the whole candidate graph at once (about 20-35 s at 33k
# on a 2-core machine); above it, band by band (_BAND_CELLS cells a band), since LAPJVsp grows ~quadratically.
_GLOBAL_MAX_WORDS = 50_000
_BAND_CELLS = 16_384
_BAND_SWEEPS = 4

# The "dummies" square-up is used while its extra edges stay within this many times the candidate edges.
_DUMMY_EDGES_FACTOR = 8

# Priced candidates: the k * k cells are picked from the grid of each word's _GRID_WIDEN * k best priced
# rows and columns (wider grids find cheaper tables; 4 keeps the grid at 1024 cells for k = 8).
_GRID_WIDEN = 4

# The price auction stops after this many bids per word on average, converged or not (prices only choose
# candidates; the matching itself stays exact on whatever graph they give).
_AUCTION_MAX_BIDS = 64


def table_cost(row_costs, col_costs, word_row, word_col) -> float:
    """Surrogate cost of a table: sum_w row_costs[w, word_row[w]] + col_costs[w, word_col[w]], in float64."""
    words = np.arange(len(word_row))
    return float(np.sum(row_costs[words, word_row], dtype=np.float64)
                 + np.sum(col_costs[words, word_col], dtype=np.float64))


def sparse_table(row_costs, col_costs, word_row, word_col, num_rows, num_cols, k, priced, stats):
    """Minimum-weight matching on the candidate graph (k * k cells per word + its current and seed cells).

    Exact on the graph up to _GLOBAL_MAX_WORDS words. scipy's LAPJVsp grows about quadratically here (33k
    words: 20 s, 100k: 170 s, 1M would take hours), so larger vocabularies are solved band by band (see
    `_banded_matching`): exact within each band, a descent over bands overall.
    Memory: the graph has at most V * (k*k + 2) edges held as int32 cell ids and float64 weights (66M edges,
    0.8 GB at V = 1M, k = 8); scipy copies them once more while solving.
    """
    vocab = row_costs.shape[0]
    row_prices = col_prices = None
    start_row, start_col = word_row, word_col
    if priced:
        started = time.perf_counter()
        # Each row holds num_cols words and each column num_rows words.
        row_prices, row_rounds, rows_held = _capacity_prices(row_costs, num_cols)
        col_prices, col_rounds, _ = _capacity_prices(col_costs, num_rows)
        stats["auction_rounds"] = (row_rounds, col_rounds)
        stats["auction_seconds"] = time.perf_counter() - started
        started = time.perf_counter()
        seed_row, seed_col = _two_phase_table(col_costs, rows_held, num_rows, num_cols)
        stats["two_phase_cost"] = table_cost(row_costs, col_costs, seed_row, seed_col)
        stats["two_phase_seconds"] = time.perf_counter() - started
        extras = [(word_row, word_col), (seed_row, seed_col)]
        if stats["two_phase_cost"] < table_cost(row_costs, col_costs, word_row, word_col):
            start_row, start_col = seed_row, seed_col
    else:
        extras = [(word_row, word_col)]
    started = time.perf_counter()
    cells, weights, indptr = _candidate_graph(row_costs, col_costs, extras, num_rows, num_cols, k,
                                              row_prices, col_prices)
    stats["graph_seconds"] = time.perf_counter() - started
    stats["edges"] = int(len(cells))
    stats["matching_seconds"] = 0.0
    if vocab <= _GLOBAL_MAX_WORDS:
        matched = _match(cells, weights, indptr, vocab, num_rows * num_cols, stats)
        return matched // num_cols, matched % num_cols
    return _banded_matching(cells, weights, indptr, start_row, start_col, num_rows, num_cols, stats)


def _banded_matching(cells, weights, indptr, table_row, table_col, num_rows, num_cols, stats):
    """Large-V descent: exact matchings on bands of whole rows, then of whole columns, _BAND_SWEEPS sweeps.

    Starting from the cheaper of the current and two-phase tables, the rows are cut into bands of about
    _BAND_CELLS cells; the words sitting in a band are re-matched exactly to the band's cells over their
    candidate edges that fall inside it (plus the cell they hold, so the band's matching exists and never
    costs more). Then the same over bands of columns, so that words can also change row band; sweeps 3 and
    4 draw the lines of each band at random. Each band is a small problem for LAPJVsp (quadratic growth
    makes many small ones cheaper than one large one); the result is not the optimum of the whole graph
    (at V = 100k: 2% above it, against 8% for the two-phase seed), but never costs more than the start.
    """
    table_row, table_col = table_row.copy(), table_col.copy()
    words_of_edge = np.repeat(np.arange(len(indptr) - 1, dtype=np.int32), np.diff(indptr))
    stats["bands"] = []
    for sweep in range(_BAND_SWEEPS):
        by_rows = sweep % 2 == 0
        lines, across = (num_rows, num_cols) if by_rows else (num_cols, num_rows)
        per_band = max(1, _BAND_CELLS // across)  # whole lines per band
        n_bands = -(-lines // per_band)
        stats["bands"].append(n_bands)
        # The first sweep of each kind bands neighbouring lines; later ones draw the lines of a band at random
        # (fixed seeds: same input, same table), so that lines split before can share a band.
        slot = np.arange(lines) if sweep < 2 else np.random.default_rng(sweep).permutation(lines)
        edge_slot = slot[cells // num_cols if by_rows else cells % num_cols]
        order = np.argsort(edge_slot // per_band, kind="stable")
        edge_bounds = np.searchsorted((edge_slot // per_band)[order], np.arange(n_bands + 1))
        del edge_slot
        word_band = slot[table_row if by_rows else table_col] // per_band
        word_order = np.argsort(word_band, kind="stable")
        word_bounds = np.searchsorted(word_band[word_order], np.arange(n_bands + 1))
        line_of_slot = np.argsort(slot)
        for band in range(n_bands):
            band_lines = line_of_slot[band * per_band:(band + 1) * per_band]   # the band's lines, by slot
            width = len(band_lines)
            words = word_order[word_bounds[band]:word_bounds[band + 1]]
            if len(words) == 0:
                continue
            local_word = np.full(len(indptr) - 1, -1, dtype=np.int64)
            local_word[words] = np.arange(len(words))
            picked = order[edge_bounds[band]:edge_bounds[band + 1]]
            picked = picked[local_word[words_of_edge[picked]] >= 0]
            held = table_row[words] * num_cols + table_col[words]
            band_words = np.concatenate([local_word[words_of_edge[picked]], np.arange(len(words))])
            band_cells = np.concatenate([cells[picked].astype(np.int64), held])
            band_weights = np.concatenate([weights[picked], _cell_weights(weights, cells, indptr, words, held)])
            # Local cell = (line's place in the band) x (position across).
            row, col = band_cells // num_cols, band_cells % num_cols
            local_cell = (slot[row] % per_band) * across + col if by_rows else (slot[col] % per_band) * across + row
            n_cells = width * across
            key, unique = np.unique(band_words * n_cells + local_cell, return_index=True)
            counts = np.bincount(key // n_cells, minlength=len(words))
            band_indptr = np.zeros(len(words) + 1, dtype=np.int64)
            np.cumsum(counts, out=band_indptr[1:])
            matched = _match((key % n_cells).astype(np.int32), band_weights[unique].copy(), band_indptr,
                             len(words), n_cells, stats)
            line, position = band_lines[matched // across], matched % across
            if by_rows:
                table_row[words], table_col[words] = line, position
            else:
                table_row[words], table_col[words] = position, line
    return table_row, table_col


def _cell_weights(weights, cells, indptr, words, held):
    """Weight of each word's edge to the cell it holds (every held cell is one of its edges)."""
    lengths = indptr[words + 1] - indptr[words]
    edge = np.repeat(indptr[words], lengths) + (np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths))
    hit = cells[edge] == np.repeat(held, lengths)
    owner = np.repeat(np.arange(len(words)), lengths)
    result = np.empty(len(words))
    result[owner[hit]] = weights[edge[hit]]
    return result


def _match(cells, weights, indptr, n_words, n_cells, stats):
    """Minimum-weight matching of every word to a distinct cell over the CSR graph; returns each word's cell.

    `cells` are int32 ids in [0, n_cells), `weights` float64 (overwritten), one CSR row per word.
    """
    from scipy.sparse import csr_array
    from scipy.sparse.csgraph import min_weight_full_bipartite_matching

    # Weights become integers in [1, 2**bits + 1]:
    # - scipy drops explicit zeros (they mean "no edge") and costs may be 0 or negative, hence the shift to
    #   >= 1; every perfect matching uses one edge per word (and a fixed number of weight-1 helper edges,
    #   below), so a constant shift leaves the optimum unchanged;
    # - scipy's LAPJVsp tests path lengths for equality and with fractional float weights it can loop forever
    #   on a feasible problem (seen with scipy 1.17 on a 400-word table); on integer-valued weights every sum
    #   it forms is exact as long as it stays below 2**53, so `bits` keeps a sum of (matrix size) weights under
    #   2**50. Rounding moves each edge by at most quantum / 2, so the table found is within V * quantum of the
    #   optimum on the graph (quantum ~ 1e-9 of the cost range at V = 1M); the costs reported are the real ones.
    low, span = weights.min(), weights.max() - weights.min()
    bits = 50 - math.ceil(math.log2(n_words + n_cells))
    quantum = float(span) / 2**bits if span > 0 else 1.0
    weights -= low
    weights /= quantum
    np.rint(weights, out=weights)
    weights += 1.0
    stats["weight_quantum"] = max(quantum, stats.get("weight_quantum", 0.0))

    # Cells that no word can reach stay empty: leave them out, so the problem is posed on the cells in use.
    reachable = np.bincount(cells, minlength=n_cells) > 0
    cell_ids = np.flatnonzero(reachable)
    compact = np.cumsum(reachable, dtype=np.int64) - 1
    cells = compact[cells].astype(np.int32)
    n_cells = len(cell_ids)
    spare = n_cells - n_words

    # scipy's LAPJVsp only runs its fast initialisation on square problems: posed rectangular (words x more
    # cells) it clears an O(cells) array for every word, and is 2-3x slower at V = 33k. So the problem is
    # made square, with one of two helpers:
    # - "dummies": `spare` dummy words joined to every cell at weight 1 take the cells left empty; the
    #   faster of the two (18 s against 27 s at V = 33k), used while its spare * cells edges stay within
    #   _DUMMY_EDGES_FACTOR times the candidate edges;
    # - "empty-slots": one extra row per cell (joined to its own cell) and one extra column per word (joined
    #   to the extra rows of that word's candidate cells): a cell taken by word w frees its extra row, which
    #   moves to some word's extra column (w's at least, so every word matching extends to a perfect one,
    #   and every perfect one restricted to the words is a word matching). About 2x the candidate edges.
    if spare == 0:
        formulation = "square"
        matrix = csr_array((weights, cells, indptr), shape=(n_words, n_cells))
    elif spare * n_cells <= _DUMMY_EDGES_FACTOR * len(cells):
        formulation = "dummies"
        indptr = np.concatenate([indptr, indptr[-1] + n_cells * np.arange(1, spare + 1, dtype=np.int64)])
        cells = np.concatenate([cells, np.tile(np.arange(n_cells, dtype=np.int32), spare)])
        weights = np.concatenate([weights, np.ones(spare * n_cells)])
        matrix = csr_array((weights, cells, indptr), shape=(n_cells, n_cells))
    else:
        formulation = "empty-slots"
        matrix = _empty_slot_matrix(cells, weights, indptr, n_words, n_cells)
    del cells, weights, indptr
    stats.setdefault("formulations", {})
    stats["formulations"][formulation] = stats["formulations"].get(formulation, 0) + 1
    stats["formulation"] = formulation if len(stats["formulations"]) == 1 else "mixed"
    stats["matrix_edges"] = stats.get("matrix_edges", 0) + int(matrix.nnz)
    started = time.perf_counter()
    _, matched = min_weight_full_bipartite_matching(matrix)
    stats["matching_seconds"] = stats.get("matching_seconds", 0.0) + time.perf_counter() - started
    del matrix
    return cell_ids[np.asarray(matched[:n_words], dtype=np.int64)]


def _candidate_graph(row_costs, col_costs, extras, num_rows, num_cols, k, row_prices, col_prices):
    """CSR pieces (cell ids int32, float64 weights, indptr int64) of each word's candidate cells.

    Without prices ("plain"): the k x k cells of the word's k cheapest rows and k cheapest columns. With
    capacity prices ("priced"): the k * k cells of least priced cost row_costs + row_prices + col_costs +
    col_prices among the grid of its _GRID_WIDEN * k cheapest priced rows and columns. Either way each of the
    `extras` tables ((word_row, word_col) pairs: the current table, and with prices the two-phase one) adds
    its cell for the word when not already there. Edge weights are the real costs: prices only choose.
    Built a block of words at a time (argpartition, broadcasting): no Python loop per word, and temporaries
    bounded by _CHUNK_ENTRIES whatever V is.
    """
    vocab = row_costs.shape[0]
    widen = 1 if row_prices is None else _GRID_WIDEN
    grid_rows, grid_cols = min(widen * k, num_rows), min(widen * k, num_cols)
    per_word = min(k * k, grid_rows * grid_cols)
    cells = np.empty(vocab * (per_word + len(extras)), dtype=np.int32)
    weights = np.empty(vocab * (per_word + len(extras)), dtype=np.float64)
    counts = np.empty(vocab, dtype=np.int64)
    chunk = max(1, _CHUNK_ENTRIES // max(num_rows, num_cols, grid_rows * grid_cols))
    filled = 0
    for lo in range(0, vocab, chunk):
        hi = min(vocab, lo + chunk)
        n = hi - lo
        words = np.arange(lo, hi)[:, None]
        rows_part, cols_part = row_costs[lo:hi].astype(np.float64), col_costs[lo:hi].astype(np.float64)
        if row_prices is not None:
            rows_part += row_prices
            cols_part += col_prices
        top_rows = _smallest(rows_part, grid_rows)                                      # (n, grid_rows)
        top_cols = _smallest(cols_part, grid_cols)                                      # (n, grid_cols)
        block_cells = (top_rows[:, :, None] * num_cols + top_cols[:, None, :]).reshape(n, -1)
        if per_word < grid_rows * grid_cols:
            priced = (np.take_along_axis(rows_part, top_rows, 1)[:, :, None]
                      + np.take_along_axis(cols_part, top_cols, 1)[:, None, :]).reshape(n, -1)
            block_cells = np.take_along_axis(block_cells, _smallest(priced, per_word), 1)
        block_weights = (row_costs[words, block_cells // num_cols].astype(np.float64)
                         + col_costs[words, block_cells % num_cols])
        keep = [np.ones(block_cells.shape, dtype=bool)]
        for extra_row, extra_col in extras:
            here_row, here_col = extra_row[lo:hi], extra_col[lo:hi]
            here = here_row * num_cols + here_col
            # An extra cell is one more edge unless it is already a candidate.
            keep.append(~(block_cells == here[:, None]).any(1, keepdims=True))
            here_weight = row_costs[words[:, 0], here_row].astype(np.float64) + col_costs[words[:, 0], here_col]
            block_cells = np.concatenate([block_cells, here[:, None]], 1)
            block_weights = np.concatenate([block_weights, here_weight[:, None]], 1)
        keep = np.concatenate(keep, 1)
        taken = int(keep.sum())
        cells[filled:filled + taken] = block_cells[keep]       # row-major: each word's edges stay together
        weights[filled:filled + taken] = block_weights[keep]
        counts[lo:hi] = keep.sum(1)
        filled += taken
    indptr = np.zeros(vocab + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    # Copies only when some current cells were already candidates; the slack is at most V entries.
    return cells[:filled].copy(), weights[:filled].copy(), indptr


def _two_phase_table(col_costs, rows_held, num_rows, num_cols):
    """Keep the auction's rows and give each row's words their best columns (exact, one small assignment per row).

    This table respects the cell structure that separable prices cannot see (which columns are free in which
    row); added as one more candidate per word it lets the matching start from a good global layout. The
    rows are independent: they are spread over torch.get_num_threads() threads (linear_sum_assignment
    releases the GIL), since at V = 1M the 1000 assignments of 1000 x 1000 take 4 minutes on one core.
    """
    from concurrent.futures import ThreadPoolExecutor

    from scipy.optimize import linear_sum_assignment

    new_col = np.empty(len(rows_held), dtype=np.int64)
    order = np.argsort(rows_held, kind="stable")
    bounds = np.searchsorted(rows_held[order], np.arange(num_rows + 1))

    def solve(row):
        words = order[bounds[row]:bounds[row + 1]]
        if len(words):
            new_col[words] = linear_sum_assignment(col_costs[words].astype(np.float64))[1]

    workers = max(1, min(torch.get_num_threads(), num_rows))
    if workers == 1:
        for row in range(num_rows):  # a loop over rows (sqrt V of them), not words
            solve(row)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(solve, range(num_rows)))
    return rows_held.astype(np.int64), new_col


def _capacity_prices(costs, capacity):
    """Prices that spread the words over the rows (or columns): an auction on the relaxed one-sided problem.

    The relaxation: every word takes one row, a row holds at most `capacity` words, minimise the summed
    row costs. Forward auction (Bertsekas), all unplaced words bidding at once: a word bids for its best
    row under current prices, raising that row's price by its margin over its second-best row plus eps; a
    row keeps its `capacity` highest bids and its price is the lowest bid it keeps (0 while it has room).
    Ends when every word is placed (eps-optimal prices) or after _AUCTION_MAX_BIDS bids per word. Popular
    rows end up expensive, so words that cannot win them (the rare words, whose small costs all rank the
    same popular rows first) take their candidates among the rows they can actually get. Returns (prices,
    rounds, assignment): the row each word holds at the end (every word has one).
    """
    vocab, width = costs.shape
    prices = np.zeros(width)
    if width < 2 or vocab <= capacity:
        return prices, 0, np.argmin(costs, axis=1)
    # eps sets the price resolution: 5% of a typical word's cost per row. At V = 100k, 1% gives tables 0.25%
    # cheaper for twice the auction time (9 s instead of 4.4).
    typical = float(np.median(np.concatenate([np.mean(costs[lo:lo + 65536], axis=1, dtype=np.float64)
                                              for lo in range(0, vocab, 65536)])))
    eps = 5e-2 * abs(typical) if typical else 5e-2
    slot_bid = np.zeros((width, capacity))             # bids are > 0, so 0 marks a free slot
    slot_word = np.full((width, capacity), -1, dtype=np.int64)
    bidders = np.arange(vocab)
    bids_made = 0
    rounds = 0
    chunk = max(1, _CHUNK_ENTRIES // width)
    while len(bidders) and bids_made < _AUCTION_MAX_BIDS * vocab:
        rounds += 1
        bids_made += len(bidders)
        target = np.empty(len(bidders), dtype=np.int64)
        bid = np.empty(len(bidders))
        for lo in range(0, len(bidders), chunk):
            reduced = costs[bidders[lo:lo + chunk]] + prices
            two = np.argpartition(reduced, 1, axis=1)[:, :2]
            values = np.take_along_axis(reduced, two, 1)
            first = values[:, 0] <= values[:, 1]
            target[lo:lo + chunk] = np.where(first, two[:, 0], two[:, 1])
            bid[lo:lo + chunk] = prices[target[lo:lo + chunk]] + np.abs(values[:, 1] - values[:, 0]) + eps
        touched = np.unique(target)
        rows = np.concatenate([np.repeat(touched, capacity), target])
        all_bids = np.concatenate([slot_bid[touched].ravel(), bid])
        all_words = np.concatenate([slot_word[touched].ravel(), bidders])
        order = np.lexsort((-all_bids, rows))
        rows, all_bids, all_words = rows[order], all_bids[order], all_words[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows)
        kept = rank < capacity
        slot_bid[rows[kept], rank[kept]] = all_bids[kept]
        slot_word[rows[kept], rank[kept]] = all_words[kept]
        bidders = all_words[~kept]
        bidders = bidders[bidders >= 0]
        prices[touched] = slot_bid[touched].min(axis=1)
    # Words still unplaced when the bid budget ran out take the free slots, in no particular order: the
    # assignment only seeds one extra candidate per word.
    placed = slot_word.ravel()
    free = np.flatnonzero(placed < 0)[:len(bidders)]
    placed[free] = bidders
    assignment = np.empty(vocab, dtype=np.int64)
    holders = np.flatnonzero(placed >= 0)
    assignment[placed[holders]] = holders // capacity
    return prices, rounds, assignment


def _smallest(costs, k):
    """Column indices of the k smallest entries of each row (in no particular order), int64."""
    if k >= costs.shape[1]:
        return np.broadcast_to(np.arange(costs.shape[1]), costs.shape).copy()
    return np.argpartition(costs, k - 1, axis=1)[:, :k]


def _empty_slot_matrix(cells, weights, indptr, vocab, n_cells):
    """Square (V + cells) matrix: words, then one extra row per cell; cells, then one extra column per word.

    The extra row of cell c is joined to c and to the extra column of every word that has c as candidate;
    all helper edges weigh 1. Every perfect matching has V word edges and `cells` helper edges, so its weight
    is the word matching's weight plus a constant.
    """
    from scipy.sparse import csr_array

    words_graph = csr_array((weights, cells, indptr), shape=(vocab, n_cells))
    by_cell = words_graph.tocsc()  # counting sort in C: for each cell, the words that may take it
    n_helper = n_cells + by_cell.nnz
    helper_ptr = by_cell.indptr.astype(np.int64) + np.arange(n_cells + 1)
    helper_cols = np.empty(n_helper, dtype=np.int32)
    helper_cols[helper_ptr[:-1]] = np.arange(n_cells, dtype=np.int32)  # each extra row's own cell first
    word_slots = np.ones(n_helper, dtype=bool)
    word_slots[helper_ptr[:-1]] = False
    helper_cols[word_slots] = n_cells + by_cell.indices
    del by_cell
    full_ptr = np.concatenate([indptr, indptr[-1] + helper_ptr[1:]])
    full_cols = np.concatenate([cells, helper_cols])
    full_weights = np.concatenate([weights, np.ones(n_helper)])
    size = vocab + n_cells
    return csr_array((full_weights, full_cols, full_ptr), shape=(size, size))
