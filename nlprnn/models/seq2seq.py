"""Attention encoder-decoder for translation: bidirectional LSTM/GRU encoder, LSTM/GRU decoder with attention.

The decoder follows Luong et al. (2015) with the scoring of either Bahdanau et al. (2015, additive:
v^T tanh(W_q h + W_k e)) or Luong (dot: h^T e; general: h^T W e), as JoeyNMT does:

    h_t = RNN([y_{t-1}; a_{t-1}], h_{t-1})          input feeding: the previous attentional vector goes in
    c_t = sum_s softmax_s(score(h_t, e_s)) e_s      padded source positions are masked out
    a_t = tanh(W_c [h_t; c_t])                      the attentional vector
    P(y_t) = softmax(W_o dropout(a_t))

Without input feeding the decoder RNN runs over the whole target at once and attention is batched over time.
The decoder starts from a "bridge" of the encoder's last states: tanh(W_b [h_fwd; h_bwd]).

It defines the translation contract that `TransformerSeq2Seq` and the decoding code (`nlprnn.decode`) follow.
Every tensor in `memory` and `state` has the batch on dim 0, so beams are reordered by one `index_select`:

    forward(src (B, S), src_lengths (B,), tgt_in (B, T)) -> logits (B, T, V) float32
    encode(src, src_lengths) -> memory (dict of tensors)
    init_state(memory) -> state
    decode_step(prev_tokens (N,), state, memory) -> (log-probs (N, V) float32, state)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nlprnn.config import choice
from nlprnn.errors import NlprnnError
from nlprnn.models.common import (
    INIT_SCHEMES,
    check_fields,
    check_filled_in,
    count_parameters,
    init_weights,
    run_rnn,
)

CELLS = ("gru", "lstm")
ATTENTIONS = ("bahdanau", "luong_dot", "luong_general")


@dataclass
class Seq2SeqConfig:
    src_vocab_size: int = 0  # this and the special ids are filled in by the task from its tokenizers
    tgt_vocab_size: int = 0
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    cell: str = choice("gru", *CELLS)
    embedding_size: int = 256
    hidden_size: int = 512  # decoder size; each encoder direction has hidden_size // 2
    encoder_layers: int = 1
    decoder_layers: int = 1
    attention: str = choice("bahdanau", *ATTENTIONS)
    input_feeding: bool = True
    dropout: float = 0.3  # on embeddings, between layers and before the output layer
    tie_target_embeddings: bool = False  # output layer = target embeddings; needs embedding_size == hidden_size
    init: str = choice("uniform", *INIT_SCHEMES)
    init_range: float = 0.1

    def __post_init__(self):
        check_fields(self, positive=("embedding_size", "hidden_size", "encoder_layers", "decoder_layers"))
        if self.hidden_size % 2:
            raise NlprnnError(f"model.hidden_size: expected an even number (two encoder directions of half "
                              f"its size), got {self.hidden_size}")
        if self.tie_target_embeddings and self.embedding_size != self.hidden_size:
            raise NlprnnError("model.tie_target_embeddings needs model.embedding_size == model.hidden_size, got "
                              f"{self.embedding_size} and {self.hidden_size}")


class Attention(nn.Module):
    """Scores of a decoder query against the encoder outputs; keys are precomputed once per source."""

    def __init__(self, kind: str, query_size: int, memory_size: int):
        super().__init__()
        self.kind = kind
        if kind == "bahdanau":
            self.key_layer = nn.Linear(memory_size, query_size, bias=False)
            self.query_layer = nn.Linear(query_size, query_size, bias=False)
            self.energy = nn.Linear(query_size, 1, bias=False)
        elif kind == "luong_general":
            self.key_layer = nn.Linear(memory_size, query_size, bias=False)
        elif memory_size != query_size:
            raise NlprnnError(f"luong_dot attention needs decoder and encoder outputs of one size, got "
                              f"{query_size} and {memory_size}")

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return memory if self.kind == "luong_dot" else self.key_layer(memory)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor):
        """query (B, T, H), keys (B, S, H), values (B, S, M), mask (B, S) True at real tokens -> (context, weights)."""
        if self.kind == "bahdanau":
            scores = self.energy(torch.tanh(self.query_layer(query)[:, :, None] + keys[:, None])).squeeze(-1)
        else:
            scores = torch.bmm(query, keys.transpose(1, 2))
        weights = torch.softmax(scores.masked_fill(~mask[:, None], float("-inf")), dim=-1)
        return torch.bmm(weights, values), weights


class Seq2Seq(nn.Module):
    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        check_filled_in(config, "src_vocab_size", "tgt_vocab_size")
        self.config = config
        c = config
        rnn = nn.LSTM if c.cell == "lstm" else nn.GRU
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.embedding_size, padding_idx=c.pad_id)
        self.tgt_embedding = nn.Embedding(c.tgt_vocab_size, c.embedding_size, padding_idx=c.pad_id)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder = rnn(c.embedding_size, c.hidden_size // 2, num_layers=c.encoder_layers, bidirectional=True,
                           batch_first=True, dropout=c.dropout if c.encoder_layers > 1 else 0.0)
        self.bridge = nn.Linear(c.hidden_size, c.decoder_layers * c.hidden_size)
        self.attention = Attention(c.attention, c.hidden_size, c.hidden_size)
        decoder_input = c.embedding_size + (c.hidden_size if c.input_feeding else 0)
        self.decoder = rnn(decoder_input, c.hidden_size, num_layers=c.decoder_layers, batch_first=True,
                           dropout=c.dropout if c.decoder_layers > 1 else 0.0)
        self.combine = nn.Linear(2 * c.hidden_size, c.hidden_size, bias=False)
        self.output = nn.Linear(c.hidden_size, c.tgt_vocab_size)
        init_weights(self, c.init, c.init_range)
        if c.tie_target_embeddings:
            self.output.weight = self.tgt_embedding.weight
        with torch.no_grad():  # init_weights filled the padding rows too
            self.src_embedding.weight[c.pad_id].zero_()
            self.tgt_embedding.weight[c.pad_id].zero_()

    # -- encoder ------------------------------------------------------------------------------------

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> dict:
        embedded = self.dropout(self.src_embedding(src))
        packed = pack_padded_sequence(embedded, src_lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, final = self.encoder(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        final = final[0] if isinstance(final, tuple) else final  # LSTM: (h, c); the bridge takes h
        last = torch.cat([final[-2], final[-1]], dim=-1)  # top layer, both directions: (B, H)
        return {"outputs": outputs, "keys": self.attention.keys(outputs), "mask": src != self.config.pad_id,
                "bridge": torch.tanh(self.bridge(last))}

    def init_state(self, memory: dict) -> dict:
        c = self.config
        hidden = memory["bridge"].view(-1, c.decoder_layers, c.hidden_size)  # batch first, see module docstring
        state = {"h": hidden, "feed": hidden.new_zeros(hidden.shape[0], c.hidden_size)}
        if c.cell == "lstm":
            state["c"] = hidden
        return state

    # -- decoder ------------------------------------------------------------------------------------

    def _rnn_state(self, state: dict):
        h = state["h"].transpose(0, 1).contiguous()
        return (h, state["c"].transpose(0, 1).contiguous()) if "c" in state else h

    def _attend(self, queries: torch.Tensor, memory: dict) -> torch.Tensor:
        """Attentional vectors a_t (B, T, H) of decoder outputs (B, T, H)."""
        context, _ = self.attention(queries, memory["keys"], memory["outputs"], memory["mask"])
        return torch.tanh(self.combine(torch.cat([queries, context], dim=-1)))

    def _step(self, embedded: torch.Tensor, state: dict, memory: dict) -> tuple[torch.Tensor, dict]:
        """One target position: embedded (B, E) -> attentional vector (B, H), new state."""
        inputs = torch.cat([embedded, state["feed"]], dim=-1) if self.config.input_feeding else embedded
        output, rnn_state = run_rnn(self.decoder, inputs[:, None], self._rnn_state(state))
        attentional = self._attend(output, memory)[:, 0]
        new_state = {"feed": attentional}
        if isinstance(rnn_state, tuple):
            new_state["h"], new_state["c"] = rnn_state[0].transpose(0, 1), rnn_state[1].transpose(0, 1)
        else:
            new_state["h"] = rnn_state.transpose(0, 1)
        return attentional, new_state

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory = self.encode(src, src_lengths)
        state = self.init_state(memory)
        embedded = self.dropout(self.tgt_embedding(tgt_in))
        if self.config.input_feeding:
            steps = []
            for t in range(tgt_in.shape[1]):
                attentional, state = self._step(embedded[:, t], state, memory)
                steps.append(attentional)
            attentional = torch.stack(steps, dim=1)
        else:
            # Nothing feeds back: the RNN runs over the whole target, attention is batched over time.
            outputs, _ = run_rnn(self.decoder, embedded, self._rnn_state(state))
            attentional = self._attend(outputs, memory)
        return self.output(self.dropout(attentional)).float()

    def decode_step(self, prev_tokens: torch.Tensor, state: dict, memory: dict) -> tuple[torch.Tensor, dict]:
        attentional, state = self._step(self.tgt_embedding(prev_tokens), state, memory)
        return F.log_softmax(self.output(attentional).float(), dim=-1), state

    def param_counts(self) -> dict[str, int]:
        embedding_softmax = [*self.src_embedding.parameters(), *self.tgt_embedding.parameters(),
                             *self.output.parameters()]
        return {"total": count_parameters(self), "embedding_softmax": count_parameters(embedding_softmax)}
