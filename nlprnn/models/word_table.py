"""The Light RNN word table: every vocabulary word in its own cell (row, column) of an R x C grid.

A `WordTable` is an `nn.Module` holding three buffers, so a checkpoint carries the table with the weights:
`word_row` (V,) and `word_col` (V,) give each word's cell, `cell_word` (R * C,) the word in each cell (-1 when
empty). Any change goes through `assign`, which checks that words and used cells are in bijection before
touching anything; loading a state dict checks it too, so a corrupt checkpoint fails at load time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nlprnn.errors import NlprnnError

TABLE_SHAPES = ("square", "rectangle")
TABLE_INITS = ("random", "frequency")


def table_shape(vocab_size: int, shape: str = "square") -> tuple[int, int]:
    """(rows, columns) of the table for `vocab_size` >= 1 words.

    "square": R = C = ceil(sqrt V), as in the paper; "rectangle": C = ceil(sqrt V), R = ceil(V / C), the
    fewest empty cells.
    """
    if shape not in TABLE_SHAPES:
        raise NlprnnError(f"table shape: expected one of {', '.join(TABLE_SHAPES)}, got {shape!r}")
    cols = math.isqrt(vocab_size - 1) + 1  # ceil(sqrt V) in integers: no float rounding at any size
    if shape == "square":
        return cols, cols
    return -(-vocab_size // cols), cols


def _check_after_load(module, incompatible_keys) -> None:
    module.check()


class WordTable(nn.Module):
    def __init__(self, vocab_size: int, num_rows: int, num_cols: int, word_row=None, word_col=None):
        """A table of `num_rows` x `num_cols` cells for `vocab_size` words; by default word i in cell i (row-major)."""
        super().__init__()
        if vocab_size < 1 or num_rows < 1 or num_cols < 1:
            raise NlprnnError(f"WordTable: expected positive sizes, got V={vocab_size}, R={num_rows}, C={num_cols}")
        if vocab_size > num_rows * num_cols:
            raise NlprnnError(f"WordTable: {vocab_size} words do not fit a {num_rows} x {num_cols} table")
        self.vocab_size, self.num_rows, self.num_cols = int(vocab_size), int(num_rows), int(num_cols)
        self.register_buffer("word_row", torch.zeros(vocab_size, dtype=torch.long))
        self.register_buffer("word_col", torch.zeros(vocab_size, dtype=torch.long))
        self.register_buffer("cell_word", torch.full((num_rows * num_cols,), -1, dtype=torch.long))
        if word_row is None and word_col is None:
            cells = torch.arange(vocab_size)
            word_row, word_col = cells // num_cols, cells % num_cols
        self.assign(word_row, word_col)
        self.register_load_state_dict_post_hook(_check_after_load)

    @classmethod
    def initial(cls, vocab_size: int, shape: str = "square", init: str = "random", seed: int = 0) -> WordTable:
        """The starting table: "frequency" puts word id i (a frequency rank) in cell i, so frequent words share
        the first rows; "random" draws a cell per word from a generator of its own (seed), so the table neither
        depends on nor disturbs the global seed of the weights."""
        rows, cols = table_shape(vocab_size, shape)
        if init == "frequency":
            cells = torch.arange(vocab_size)
        elif init == "random":
            generator = torch.Generator().manual_seed(seed)
            cells = torch.randperm(rows * cols, generator=generator)[:vocab_size]
        else:
            raise NlprnnError(f"table init: expected one of {', '.join(TABLE_INITS)}, got {init!r}")
        return cls(vocab_size, rows, cols, cells // cols, cells % cols)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, rows={self.num_rows}, cols={self.num_cols}"

    def _cells(self, word_row: torch.Tensor, word_col: torch.Tensor, what: str) -> torch.Tensor:
        """Flat cell index of every word, after checking that words and used cells are in bijection."""
        vocab = self.vocab_size
        for name, index, limit in (("word_row", word_row, self.num_rows), ("word_col", word_col, self.num_cols)):
            if index.shape != (vocab,):
                raise NlprnnError(f"{what}: {name} must have shape ({vocab},), got {tuple(index.shape)}")
            if index.dtype.is_floating_point or index.dtype == torch.bool:
                raise NlprnnError(f"{what}: {name} must hold integers, got {index.dtype}")
            if index.min() < 0 or index.max() >= limit:
                raise NlprnnError(
                    f"{what}: {name} must lie in [0, {limit}) for a {self.num_rows} x {self.num_cols} table, "
                    f"got values in [{int(index.min())}, {int(index.max())}]"
                )
        cells = word_row.long() * self.num_cols + word_col.long()
        values, counts = torch.unique(cells, return_counts=True)
        if values.numel() != vocab:
            cell = int(values[counts > 1][0])
            words = torch.nonzero(cells == cell).flatten().tolist()
            raise NlprnnError(f"{what}: words {words} share cell ({cell // self.num_cols}, {cell % self.num_cols}); "
                              "every word needs a cell of its own")
        return cells

    @torch.no_grad()
    def assign(self, word_row, word_col) -> None:
        """Move every word w to cell (word_row[w], word_col[w]); nothing changes unless the new table is valid."""
        device = self.word_row.device
        word_row = torch.as_tensor(word_row, device=device)
        word_col = torch.as_tensor(word_col, device=device)
        cells = self._cells(word_row, word_col, "WordTable.assign")
        # In place, so references to the buffers (DDP broadcasts them from rank 0) stay valid.
        self.word_row.copy_(word_row)
        self.word_col.copy_(word_col)
        self.cell_word.fill_(-1)
        self.cell_word[cells] = torch.arange(self.vocab_size, device=device)

    @torch.no_grad()
    def check(self) -> None:
        """Raise NlprnnError unless the three buffers describe one bijection of words to used cells."""
        what = "LightRNN word table"
        cells = self._cells(self.word_row, self.word_col, what)
        expected = torch.full_like(self.cell_word, -1)
        expected[cells] = torch.arange(self.vocab_size, device=cells.device)
        if not torch.equal(expected, self.cell_word):
            raise NlprnnError(f"{what}: cell_word does not match word_row/word_col (corrupt checkpoint?)")

    def copy(self) -> WordTable:
        """An independent table on the CPU with the same placement."""
        return WordTable(self.vocab_size, self.num_rows, self.num_cols, self.word_row.cpu(), self.word_col.cpu())

    def moved_words(self, other: WordTable) -> int:
        """How many words sit in a different cell in `other`."""
        changed = (self.word_row.cpu() != other.word_row.cpu()) | (self.word_col.cpu() != other.word_col.cpu())
        return int(changed.sum())

    def masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive float32 masks: (R,) for the row softmax and (R, C) for the column softmax given a row.

        Rows without words and empty cells get -inf, so the V real words' probabilities sum to 1 in every
        context. A row with no word at all keeps an unmasked column softmax: it is never a target's row, and
        an all -inf row would turn into NaN (and NaN gradients) in the full distribution.
        """
        used = (self.cell_word >= 0).view(self.num_rows, self.num_cols)
        row_used = used.any(dim=1)
        zeros = torch.zeros(self.num_rows, self.num_cols, device=used.device)
        row_mask = zeros[:, 0].masked_fill(~row_used, float("-inf"))
        col_mask = zeros.masked_fill(~used & row_used[:, None], float("-inf"))
        return row_mask, col_mask
