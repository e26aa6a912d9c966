"""BiLSTM/BiGRU sequence tagger with character features and a softmax or CRF output (Lample et al. 2016;
Ma & Hovy 2016; the NCRF++ family).

    word vector  = [word embedding ; character features]      char features: CNN + max-pool, or a BiLSTM's
                                                               last states, over the word's characters
    h_1..h_L     = BiRNN(dropout(word vectors))
    emissions    = W dropout(h)                                (B, L, tags)
    output       = argmax per token (softmax) or Viterbi (CRF, with the tag scheme's transition constraints)

The tagging contract (shared with `TransformerTagger`):

    forward(words (B, L), chars (B, L, C), mask (B, L)) -> emissions (B, L, T) float32
    loss(emissions, tags, mask) -> summed negative log-likelihood over the batch
    decode(emissions, mask) -> list of tag-id lists
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from nlprnn.config import choice
from nlprnn.data.tags import allowed_transition
from nlprnn.errors import NlprnnError
from nlprnn.models.common import INIT_SCHEMES, check_fields, check_filled_in, count_parameters, init_weights
from nlprnn.models.crf import CRF


@dataclass
class TaggerHeadConfig:
    """What both taggers share: sizes filled in by the task, and the output layer."""

    vocab_size: int = 0  # words; filled in by the task, like everything up to tag_scheme
    char_vocab_size: int = 0
    tags: list[str] = field(default_factory=list)  # tag names in id order
    tag_scheme: str = "bioes"
    pad_id: int = 0
    head: str = choice("crf", "crf", "softmax")


@dataclass
class BiRNNTaggerConfig(TaggerHeadConfig):
    cell: str = choice("lstm", "lstm", "gru")
    embedding_size: int = 100
    char_features: str = choice("cnn", "cnn", "lstm", "none")
    char_embedding_size: int = 30
    char_hidden_size: int = 50  # CNN filters, or the char BiLSTM's size per direction
    char_kernel: int = 3
    hidden_size: int = 200  # the BiRNN's output: hidden_size // 2 per direction
    num_layers: int = 1
    dropout: float = 0.5
    init: str = choice("uniform", *INIT_SCHEMES)
    init_range: float = 0.1

    def __post_init__(self):
        check_fields(self, positive=("embedding_size", "char_embedding_size", "char_hidden_size", "char_kernel",
                                     "hidden_size", "num_layers"))
        if self.hidden_size % 2:
            raise NlprnnError(f"model.hidden_size: expected an even number (two directions), got {self.hidden_size}")


def crf_for(tags: list[str], scheme: str) -> CRF:
    """A CRF whose transitions forbid what the tag scheme forbids."""
    allowed = torch.tensor([[allowed_transition(a, b, scheme) for b in tags] for a in tags])
    start = torch.tensor([allowed_transition("<s>", b, scheme) for b in tags])
    end = torch.tensor([allowed_transition(a, "</s>", scheme) for a in tags])
    return CRF(len(tags), allowed, start, end)


class TaggerHead(nn.Module):
    """Emissions -> loss and decoding, by softmax or CRF."""

    def __init__(self, config: TaggerHeadConfig):
        super().__init__()
        self.kind = config.head
        self.crf = crf_for(config.tags, config.tag_scheme) if config.head == "crf" else None

    def loss(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.crf is not None:
            return -self.crf.log_likelihood(emissions, tags, mask).sum()
        return F.cross_entropy(emissions[mask], tags[mask], reduction="sum")

    def decode(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        if self.crf is not None:
            return [paths[0][1] for paths in self.crf.decode(emissions, mask)]
        best = emissions.argmax(-1).tolist()
        return [row[:length] for row, length in zip(best, mask.sum(1).tolist())]


class CharFeatures(nn.Module):
    """One vector per word from its characters: CNN + max-pool over positions, or a BiLSTM's last states."""

    def __init__(self, config: BiRNNTaggerConfig):
        super().__init__()
        c = config
        self.kind = c.char_features
        self.embedding = nn.Embedding(c.char_vocab_size, c.char_embedding_size, padding_idx=0)
        if self.kind == "cnn":
            self.conv = nn.Conv1d(c.char_embedding_size, c.char_hidden_size, c.char_kernel, padding=c.char_kernel // 2)
            self.size = c.char_hidden_size
        else:
            self.rnn = nn.LSTM(c.char_embedding_size, c.char_hidden_size, batch_first=True, bidirectional=True)
            self.size = 2 * c.char_hidden_size

    def forward(self, chars: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
        batch, length, width = chars.shape
        flat = chars.view(batch * length, width)
        embedded = dropout(self.embedding(flat))  # (N, C, E)
        present = flat != 0
        if self.kind == "cnn":
            features = self.conv(embedded.transpose(1, 2)).transpose(1, 2)  # (N, C, F)
            features = features.masked_fill(~present.unsqueeze(2), float("-inf")).amax(dim=1)
            features = torch.where(present.any(1, keepdim=True), features, torch.zeros_like(features))
        else:
            lengths = present.sum(1).clamp(min=1)
            packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
            _, (h, _) = self.rnn(packed)
            features = torch.cat([h[0], h[1]], dim=-1)
        return features.view(batch, length, -1)


class BiRNNTagger(nn.Module):
    def __init__(self, config: BiRNNTaggerConfig):
        super().__init__()
        check_filled_in(config, "vocab_size", "char_vocab_size")
        if not config.tags:
            raise NlprnnError("model.tags: expected the tag names (the task sets them from the training data)")
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_size, padding_idx=c.pad_id)
        self.chars = CharFeatures(c) if c.char_features != "none" else None
        rnn = nn.LSTM if c.cell == "lstm" else nn.GRU
        inputs = c.embedding_size + (self.chars.size if self.chars is not None else 0)
        self.rnn = rnn(inputs, c.hidden_size // 2, num_layers=c.num_layers, bidirectional=True, batch_first=True,
                       dropout=c.dropout if c.num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(c.dropout)
        self.output = nn.Linear(c.hidden_size, len(c.tags))
        self.head = TaggerHead(c)
        init_weights(self, c.init, c.init_range)  # the CRF's own scores start at zero

    def forward(self, words: torch.Tensor, chars: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        vectors = self.embedding(words)
        if self.chars is not None:
            vectors = torch.cat([vectors, self.chars(chars, self.dropout)], dim=-1)
        packed = pack_padded_sequence(self.dropout(vectors), mask.sum(1).cpu(), batch_first=True, enforce_sorted=False)
        output, _ = self.rnn(packed)
        output, _ = pad_packed_sequence(output, batch_first=True, total_length=words.shape[1])
        return self.output(self.dropout(output)).float()

    def loss(self, emissions, tags, mask):
        return self.head.loss(emissions, tags, mask)

    def decode(self, emissions, mask):
        return self.head.decode(emissions, mask)

    def param_counts(self) -> dict[str, int]:
        embedding_softmax = [*self.embedding.parameters(), *self.output.parameters()]
        return {"total": count_parameters(self), "embedding_softmax": count_parameters(embedding_softmax)}


@dataclass
class TransformerTaggerConfig(TaggerHeadConfig):
    embedding_size: int = 100
    char_features: str = choice("cnn", "cnn", "lstm", "none")
    char_embedding_size: int = 30
    char_hidden_size: int = 50
    char_kernel: int = 3
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 1024
    dropout: float = 0.3
    max_positions: int = 256  # longest sentence, in words
    init_range: float = 0.1

    def __post_init__(self):
        check_fields(self, positive=("embedding_size", "char_embedding_size", "char_hidden_size", "char_kernel",
                                     "d_model", "n_heads", "n_layers", "d_ff", "max_positions"))
        if self.d_model % self.n_heads:
            raise NlprnnError(f"model.n_heads: must divide model.d_model={self.d_model}, got {self.n_heads}")


class TransformerTagger(nn.Module):
    """The Transformer baseline: the same word and character features, a pre-norm Transformer encoder with
    sinusoidal positions instead of the BiRNN, and the same softmax or CRF head."""

    def __init__(self, config: TransformerTaggerConfig):
        super().__init__()
        from nlprnn.models.transformer import sinusoidal_positions
        from nlprnn.models.transformer_seq2seq import EncoderLayer

        check_filled_in(config, "vocab_size", "char_vocab_size")
        if not config.tags:
            raise NlprnnError("model.tags: expected the tag names (the task sets them from the training data)")
        self.config = c = config
        self.embedding = nn.Embedding(c.vocab_size, c.embedding_size, padding_idx=c.pad_id)
        self.chars = CharFeatures(c) if c.char_features != "none" else None
        inputs = c.embedding_size + (self.chars.size if self.chars is not None else 0)
        self.project = nn.Linear(inputs, c.d_model)
        self.register_buffer("positions", sinusoidal_positions(c.max_positions, c.d_model), persistent=False)
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.n_layers))
        self.norm = nn.LayerNorm(c.d_model)
        self.dropout = nn.Dropout(c.dropout)
        self.output = nn.Linear(c.d_model, len(c.tags))
        self.head = TaggerHead(c)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.uniform_(module.weight, -c.init_range, c.init_range)

    def forward(self, words: torch.Tensor, chars: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if words.shape[1] > self.config.max_positions:
            raise NlprnnError(f"a sentence of {words.shape[1]} words is longer than model.max_positions="
                              f"{self.config.max_positions}")
        vectors = self.embedding(words)
        if self.chars is not None:
            vectors = torch.cat([vectors, self.chars(chars, self.dropout)], dim=-1)
        x = self.dropout(self.project(self.dropout(vectors)) + self.positions[: words.shape[1]])
        attention_mask = mask[:, None, None, :]
        for layer in self.layers:
            x = layer(x, attention_mask)
        return self.output(self.dropout(self.norm(x))).float()

    loss = BiRNNTagger.loss
    decode = BiRNNTagger.decode
    param_counts = BiRNNTagger.param_counts
