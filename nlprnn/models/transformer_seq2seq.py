"""Encoder-decoder Transformer for translation: the baseline the attention RNNs are compared against.

Pre-norm blocks (Xiong et al., 2020: LayerNorm before each sub-layer, one after the stack), scaled token
embeddings plus sinusoidal or learned positions, shared or separate source/target embeddings, output layer
tied to the target embedding. Attention is `F.scaled_dot_product_attention`, written out here rather than
taken from `nn.TransformerDecoderLayer` because decoding needs a key/value cache: `decode_step` feeds one new
token and attends over the cached keys and values of the ones before it, never re-running the prefix.

It follows the translation contract of `nlprnn.models.seq2seq` (batch on dim 0 of every memory/state tensor).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nlprnn.config import choice
from nlprnn.errors import NlprnnError
from nlprnn.models.common import check_fields, check_filled_in, count_parameters
from nlprnn.models.transformer import sinusoidal_positions


@dataclass
class TransformerSeq2SeqConfig:
    src_vocab_size: int = 0  # this and the special ids are filled in by the task from its tokenizers
    tgt_vocab_size: int = 0
    pad_id: int = 0
    bos_id: int = 2
    eos_id: int = 3
    d_model: int = 256
    n_heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    positions: str = choice("sinusoidal", "sinusoidal", "learned")
    max_positions: int = 512  # longest source or target the model takes
    share_embeddings: bool = False  # one embedding for both sides; needs a joint vocabulary
    tie_output: bool = True  # output layer = target embedding
    init_range: float = 0.02

    def __post_init__(self):
        check_fields(self, positive=("d_model", "n_heads", "encoder_layers", "decoder_layers", "d_ff",
                                     "max_positions"))
        if self.d_model % self.n_heads:
            raise NlprnnError(f"model.n_heads: must divide model.d_model={self.d_model}, got {self.n_heads}")


class MultiHeadAttention(nn.Module):
    def __init__(self, d_model: int, n_heads: int, dropout: float):
        super().__init__()
        self.n_heads, self.dropout = n_heads, dropout
        self.query = nn.Linear(d_model, d_model)
        self.key_value = nn.Linear(d_model, 2 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        return x.view(batch, length, self.n_heads, width // self.n_heads).transpose(1, 2)

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) -> keys and values (B, heads, L, D / heads), what a cache holds."""
        key, value = self.key_value(x).chunk(2, dim=-1)
        return self._heads(key), self._heads(value)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask=None, causal=False):
        query = self._heads(self.query(x))
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, dropout_p=dropout,
                                             is_causal=causal)
        batch, _, length, _ = out.shape
        return self.out(out.transpose(1, 2).reshape(batch, length, -1))


class FeedForward(nn.Sequential):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__(nn.Linear(d_model, d_ff), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_ff, d_model))


class EncoderLayer(nn.Module):
    def __init__(self, c: TransformerSeq2SeqConfig):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.attention = MultiHeadAttention(c.d_model, c.n_heads, c.dropout)
        self.feed_forward = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        normed = self.norm1(x)
        x = x + self.dropout(self.attention(normed, *self.attention.keys_values(normed), mask=mask))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: TransformerSeq2SeqConfig):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c.d_model) for _ in range(3))
        self.self_attention = MultiHeadAttention(c.d_model, c.n_heads, c.dropout)
        self.cross_attention = MultiHeadAttention(c.d_model, c.n_heads, c.dropout)
        self.feed_forward = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x, cross_kv, src_mask, cache=None):
        """x (B, T, D). Without `cache`: causal self-attention over x. With `cache` (keys, values of the
        positions before x): x is the next position(s), and the cache grows; returns (x, new cache)."""
        normed = self.norm1(x)
        keys, values = self.self_attention.keys_values(normed)
        if cache is not None:
            keys, values = torch.cat([cache[0], keys], dim=2), torch.cat([cache[1], values], dim=2)
        x = x + self.dropout(self.self_attention(normed, keys, values, causal=cache is None))
        x = x + self.dropout(self.cross_attention(self.norm2(x), *cross_kv, mask=src_mask))
        return x + self.dropout(self.feed_forward(self.norm3(x))), (keys, values)


class TransformerSeq2Seq(nn.Module):
    def __init__(self, config: TransformerSeq2SeqConfig):
        super().__init__()
        c = config
        check_filled_in(c, "src_vocab_size", "tgt_vocab_size")
        if c.share_embeddings and c.src_vocab_size != c.tgt_vocab_size:
            raise NlprnnError(f"model.share_embeddings needs one joint vocabulary (data.joint_vocab=true), got "
                              f"{c.src_vocab_size} source and {c.tgt_vocab_size} target pieces")
        self.config = c
        self.src_embedding = nn.Embedding(c.src_vocab_size, c.d_model, padding_idx=c.pad_id)
        self.tgt_embedding = self.src_embedding if c.share_embeddings else nn.Embedding(
            c.tgt_vocab_size, c.d_model, padding_idx=c.pad_id)
        if c.positions == "learned":
            self.positions = nn.Embedding(c.max_positions, c.d_model)
        else:
            self.register_buffer("positions_table", sinusoidal_positions(c.max_positions, c.d_model), persistent=False)
        self.dropout = nn.Dropout(c.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.decoder_layers))
        self.encoder_norm, self.decoder_norm = nn.LayerNorm(c.d_model), nn.LayerNorm(c.d_model)
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self._init_weights()
        if c.tie_output:
            self.output.weight = self.tgt_embedding.weight

    def _init_weights(self):
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=self.config.init_range)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.src_embedding.weight[self.config.pad_id].zero_()
            self.tgt_embedding.weight[self.config.pad_id].zero_()

    def _embed(self, embedding: nn.Embedding, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        length = ids.shape[1]
        if start + length > self.config.max_positions:
            raise NlprnnError(f"a sequence of {start + length} tokens is longer than model.max_positions="
                              f"{self.config.max_positions}; lower data.max_length or raise it")
        if self.config.positions == "learned":
            positions = self.positions.weight[start:start + length]
        else:
            positions = self.positions_table[start:start + length]
        return self.dropout(embedding(ids) * math.sqrt(self.config.d_model) + positions)

    def encode(self, src: torch.Tensor, src_lengths: torch.Tensor) -> dict:
        mask = src != self.config.pad_id
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, S): every query may attend to the real tokens
        x = self._embed(self.src_embedding, src)
        for layer in self.encoder_layers:
            x = layer(x, attn_mask)
        outputs = self.encoder_norm(x)
        # Each decoder layer's keys and values of the source, computed once per sentence.
        cross = [layer.cross_attention.keys_values(outputs) for layer in self.decoder_layers]
        return {"outputs": outputs, "mask": mask, "cross": cross}

    def init_state(self, memory: dict) -> dict:
        batch, heads = memory["outputs"].shape[0], self.config.n_heads
        empty = memory["outputs"].new_zeros(batch, heads, 0, self.config.d_model // heads)
        return {"cache": [(empty, empty) for _ in self.decoder_layers]}

    def forward(self, src: torch.Tensor, src_lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        memory = self.encode(src, src_lengths)
        src_mask = memory["mask"][:, None, None, :]
        x = self._embed(self.tgt_embedding, tgt_in)
        for layer, cross_kv in zip(self.decoder_layers, memory["cross"]):
            x, _ = layer(x, cross_kv, src_mask)
        return self.output(self.decoder_norm(x)).float()

    def decode_step(self, prev_tokens: torch.Tensor, state: dict, memory: dict) -> tuple[torch.Tensor, dict]:
        position = state["cache"][0][0].shape[2]
        x = self._embed(self.tgt_embedding, prev_tokens[:, None], start=position)
        src_mask = memory["mask"][:, None, None, :]
        cache = []
        for layer, cross_kv, layer_cache in zip(self.decoder_layers, memory["cross"], state["cache"]):
            x, new_cache = layer(x, cross_kv, src_mask, layer_cache)
            cache.append(new_cache)
        logits = self.output(self.decoder_norm(x[:, 0])).float()
        return F.log_softmax(logits, dim=-1), {"cache": cache}

    def param_counts(self) -> dict[str, int]:
        embedding_softmax = [*self.src_embedding.parameters(), *self.tgt_embedding.parameters(),
                             *self.output.parameters()]
        return {"total": count_parameters(self), "embedding_softmax": count_parameters(embedding_softmax)}
