"""Light RNN language model (Li, Qin, Yang, Hu & Liu, NIPS 2016): words in a table, two half-steps per word.

Every word w sits in one cell (r(w), c(w)) of an R x C table with R, C ~ sqrt(V). A word is fed as its row
vector and then its column vector, and predicted as a row and then a column, so embeddings and softmax
cost O(sqrt V) parameters instead of O(V):

    P(w_t) = softmax_rows(Y_row h_col[t-1])[r(w_t)] * softmax_cols(Y_col h_row[t])[c(w_t)]

`h_col[t-1]` is the output after the column half-step of the previous word and `h_row[t]` the output after
feeding the row of w_t itself (teacher forcing with the TRUE row, never a predicted one). One recurrent
weight set serves both half-steps, which is exactly one `nn.LSTM`/`nn.GRU` run over the interleaved
sequence row(x_0), col(x_0), row(x_1), col(x_1), ... — so the fused (cuDNN) kernels do the work.

State convention: the recurrent state is always the state after the column half-step of the last consumed
word. `forward(x, y, state)` consumes x (2T half-steps) and returns that state; the column prediction for
y[T-1] needs one extra step row(y[T-1]) from it, which is not part of the returned state. With contiguous
LM data (x[t+1] = y[t]) every other column prediction is already an output of the interleaved run.

When V is not R * C some cells are empty. They get -inf logits (a row with no word in the row softmax; an
empty cell in the column softmax of its row), so the V real words' probabilities sum to 1 in every context.

The table is a `WordTable` submodule (persistent buffers `table.word_row`, `table.word_col`,
`table.cell_word`), so checkpoints carry it; `nlprnn.models.reallocate` computes a new one between training
rounds and `model.table.assign` installs it. The model follows the
LM contract of `nlprnn.models.rnnlm`, and adds `word_log_probs` for re-allocation's costs.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nlprnn.config import choice
from nlprnn.models.common import (
    INIT_SCHEMES,
    check_fields,
    check_filled_in,
    count_parameters,
    init_weights,
    run_rnn,
)
from nlprnn.models.word_table import TABLE_INITS, TABLE_SHAPES, WordTable, table_shape

CELLS = ("lstm", "gru")
__all__ = ["LightRNN", "LightRNNConfig", "WordTable", "table_shape"]


@dataclass
class LightRNNConfig:
    vocab_size: int = 0  # filled in by the task from its vocabulary
    cell: str = choice("lstm", *CELLS)
    embedding_size: int = 200
    hidden_size: int = 200
    num_layers: int = 2
    dropout: float = 0.2  # on embeddings, between layers and on the RNN output
    table_shape: str = choice(
        "square", *TABLE_SHAPES,
        help="square: R = C = ceil(sqrt V) as in the paper; rectangle: C = ceil(sqrt V), R = ceil(V / C), "
             "the fewest empty cells",
    )
    table_init: str = choice(
        "random", *TABLE_INITS,
        help="random: a random cell per word (table_seed); frequency: word id i -> cell i in row-major order",
    )
    table_seed: int = 0
    init: str = choice("uniform", *INIT_SCHEMES, help="see nlprnn.models.common.init_weights")
    init_range: float = 0.1

    def __post_init__(self):
        # vocab_size may still be 0 here (the task fills it in later); LightRNN checks it.
        check_fields(self, positive=("embedding_size", "hidden_size", "num_layers"))


def _repeat_state(state, times: int):
    """Repeat every sequence of the batch `times` times (batch is dim 1 of a (layers, batch, hidden) state)."""
    if isinstance(state, torch.Tensor):
        return state.repeat_interleave(times, dim=1)
    return tuple(_repeat_state(part, times) for part in state)


class LightRNN(nn.Module):
    def __init__(self, config: LightRNNConfig):
        super().__init__()
        check_filled_in(config, "vocab_size")
        self.config = config
        # Buffers, not parameters: no gradients, but saved, loaded and moved across devices with the weights.
        self.table = WordTable.initial(config.vocab_size, config.table_shape, config.table_init, config.table_seed)
        self._rows, self._cols = self.table.num_rows, self.table.num_cols

        self.row_embedding = nn.Embedding(self._rows, config.embedding_size)
        self.col_embedding = nn.Embedding(self._cols, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        rnn_kwargs = dict(
            input_size=config.embedding_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        self.rnn = nn.LSTM(**rnn_kwargs) if config.cell == "lstm" else nn.GRU(**rnn_kwargs)
        self.row_head = nn.Linear(config.hidden_size, self._rows)
        self.col_head = nn.Linear(config.hidden_size, self._cols)
        init_weights(self, config.init, config.init_range)

    # -- the word table -----------------------------------------------------------------------------

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    @property
    def num_cols(self) -> int:
        return self.table.num_cols

    # -- recurrence ---------------------------------------------------------------------------------

    def _run(self, embedded: torch.Tensor, state):
        """Dropout, the recurrent stack, dropout: outputs (B, S, H) and the new state."""
        embedded = self.dropout(embedded)
        output, new_state = run_rnn(self.rnn, embedded, state)
        return self.dropout(output), new_state

    def _interleave(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) word ids -> (B, 2T, E) inputs row(x_0), col(x_0), row(x_1), col(x_1), ..."""
        rows = self.row_embedding(self.table.word_row[input_ids])
        cols = self.col_embedding(self.table.word_col[input_ids])
        return torch.stack([rows, cols], dim=2).flatten(1, 2)

    def _hidden(self, input_ids: torch.Tensor, target_rows: torch.Tensor, state):
        """Outputs that predict each target's row (after col(x_t)) and column (after row(y_t)), and the state.

        Returns (row_hidden (B, T, H), col_hidden (B, T, H), new_state).
        """
        steps = input_ids.shape[1]
        # The output at interleaved position 2(t+1) came from feeding row(x[t+1]) to the state after col(x[t]),
        # which is the column prediction for y[t] whenever x[t+1] has the same row as y[t]. One cheap check on
        # the ids (a host sync before any heavy work is queued) tells whether the batch is contiguous.
        contiguous = torch.equal(self.table.word_row[input_ids[:, 1:]], target_rows[:, :-1])
        if contiguous:
            output, new_state = self._run(self._interleave(input_ids), state)
            last, _ = self._run(self.row_embedding(target_rows[:, -1:]), new_state)
            return output[:, 1::2], torch.cat([output[:, 2::2], last], dim=1), new_state
        # Not an LM stream (e.g. scoring unrelated word pairs): the states between words are needed, so go a
        # word at a time. Slower, but exactly the same model.
        row_hidden, col_hidden = [], []
        for t in range(steps):
            output, state = self._run(self._interleave(input_ids[:, t : t + 1]), state)
            column, _ = self._run(self.row_embedding(target_rows[:, t : t + 1]), state)
            row_hidden.append(output[:, 1:])
            col_hidden.append(column)
        return torch.cat(row_hidden, dim=1), torch.cat(col_hidden, dim=1), state

    # -- the LM contract ----------------------------------------------------------------------------

    def word_log_probs(self, input_ids: torch.Tensor, targets: torch.Tensor, state=None, mask_empty: bool = True):
        """Float32 log-probabilities of every row (B, T, R) and of every column given the target's true row
        (B, T, C) at each position, and the new state: what re-allocation accumulates into l_row(w, i) and
        l_col(w, j).

        With `mask_empty=False` the softmaxes run over all R rows and all C columns. Re-allocation needs
        that: an empty cell's masked log-prob is -inf, so every word seen next to it would get an infinite
        cost for it. Unmasked, each position's log-probs of the used rows (columns) shift by one constant,
        so a word's summed costs shift by one constant across cells, and the best matching is unchanged.
        """
        target_rows = self.table.word_row[targets]
        row_hidden, col_hidden, new_state = self._hidden(input_ids, target_rows, state)
        # float32 log-softmax: a bfloat16 one would quantise the loss.
        row_logits = self.row_head(row_hidden).float()
        col_logits = self.col_head(col_hidden).float()
        if mask_empty:
            row_mask, col_mask = self.table.masks()
            row_logits = row_logits + row_mask
            col_logits = col_logits + col_mask[target_rows]
        return F.log_softmax(row_logits, dim=-1), F.log_softmax(col_logits, dim=-1), new_state

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, state=None):
        """Per-word negative log-likelihood (B, T) = CE_row + CE_col of `targets`, and the new state."""
        row_logp, col_logp, new_state = self.word_log_probs(input_ids, targets, state)
        row_ll = row_logp.gather(-1, self.table.word_row[targets].unsqueeze(-1)).squeeze(-1)
        col_ll = col_logp.gather(-1, self.table.word_col[targets].unsqueeze(-1)).squeeze(-1)
        return -(row_ll + col_ll), new_state

    def next_token_logprobs(self, input_ids: torch.Tensor, state=None):
        """Log-probabilities (B, V) of the word after the last input, and the state after the inputs.

        The column softmax depends on the row fed before it, so the full distribution takes one extra step
        per row: all R rows run as one batch of B * R sequences from copies of the state.
        """
        output, new_state = self._run(self._interleave(input_ids), state)
        row_mask, col_mask = self.table.masks()
        row_logp = F.log_softmax(self.row_head(output[:, -1]).float() + row_mask, dim=-1)  # (B, R)
        batch = input_ids.shape[0]
        every_row = self.row_embedding.weight.expand(batch, -1, -1).reshape(batch * self._rows, 1, -1)
        column, _ = self._run(every_row, _repeat_state(new_state, self._rows))
        col_logits = self.col_head(column).float().view(batch, self._rows, self._cols)
        col_logp = F.log_softmax(col_logits + col_mask, dim=-1)  # (B, R, C)
        logprobs = row_logp[:, self.table.word_row] + col_logp[:, self.table.word_row, self.table.word_col]
        return logprobs, new_state

    def param_counts(self) -> dict[str, int]:
        embedding_softmax = [
            *self.row_embedding.parameters(), *self.col_embedding.parameters(),
            *self.row_head.parameters(), *self.col_head.parameters(),
        ]
        return {"total": count_parameters(self), "embedding_softmax": count_parameters(embedding_softmax)}
