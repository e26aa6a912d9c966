"""Causal Transformer language model: the baseline the recurrent models are compared against.

A GPT-style decoder (pre-norm blocks, final LayerNorm, output layer tied to the token embedding) built from
PyTorch's fused `nn.TransformerEncoderLayer` with a causal mask. It follows the LM contract of
`nlprnn.models.rnnlm`; its "recurrent state" is a window of previous token ids, prepended as context:

- `forward` with `memory=0` treats every BPTT chunk independently, like pytorch/examples' transformer.
  With `memory=M` it returns the last M tokens it saw, so the next chunk attends to them (the loss covers
  only the new positions). Recomputing that context costs attention over M extra tokens per chunk but
  needs no cached keys and values, and gives the same result as one long forward pass.
- `next_token_logprobs` always returns up to `context_size - 1` tokens, so generating token by token keeps
  as much context as the model can take.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nlprnn.config import choice
from nlprnn.errors import NlprnnError
from nlprnn.models.common import check_fields, check_filled_in, count_parameters


@dataclass
class TransformerLMConfig:
    vocab_size: int = 0  # filled in by the task from its vocabulary
    d_model: int = 256
    n_heads: int = 4
    n_layers: int = 4
    d_ff: int = 1024
    dropout: float = 0.1
    positions: str = choice("learned", "learned", "sinusoidal")
    context_size: int = 256  # the most positions the model attends over, state included
    memory: int = 0  # previous tokens carried across forward() calls; 0 = chunks are independent
    tie_weights: bool = True
    init_range: float = 0.02  # std of the normal init of weight matrices and embeddings

    def __post_init__(self):
        check_fields(self, positive=("d_model", "n_heads", "n_layers", "d_ff", "context_size"))
        if self.d_model % self.n_heads:
            raise NlprnnError(
                f"model.n_heads: must divide model.d_model={self.d_model} (each head gets d_model / n_heads "
                f"dimensions), got {self.n_heads}"
            )
        if not 0 <= self.memory < self.context_size:
            raise NlprnnError(
                f"model.memory: expected 0 <= memory < model.context_size={self.context_size} "
                f"(the carried tokens and at least one new one must fit in the context), got {self.memory}"
            )


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """The fixed position encodings of Vaswani et al. (2017), shape (num_positions, dim)."""
    position = torch.arange(num_positions, dtype=torch.float32).unsqueeze(1)
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency)[:, : dim // 2]
    return table


def last_tokens(tokens: torch.Tensor, count: int) -> torch.Tensor:
    """The last `count` columns of (B, L) `tokens`; all of them when L <= count, none when count == 0."""
    return tokens[:, max(tokens.shape[1] - count, 0) :]


class TransformerLM(nn.Module):
    def __init__(self, config: TransformerLMConfig):
        super().__init__()
        check_filled_in(config, "vocab_size")
        self.config = config

        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        if config.positions == "learned":
            self.position_embedding = nn.Embedding(config.context_size, config.d_model)
        else:
            # Not persistent: it is recomputed from the config, so checkpoints need not store it.
            self.register_buffer(
                "position_table", sinusoidal_positions(config.context_size, config.d_model), persistent=False
            )
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                config.d_model,
                config.n_heads,
                dim_feedforward=config.d_ff,
                dropout=config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,  # pre-norm: well-scaled gradients at init, little need for warmup
            )
            for _ in range(config.n_layers)
        )
        self.final_norm = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self._init_weights()
        if config.tie_weights:
            self.lm_head.weight = self.token_embedding.weight

    def _init_weights(self):
        # GPT-2 init: N(0, init_range) for every matrix, zero biases, LayerNorms at identity; the projections
        # that write into the residual stream are scaled down by sqrt(2 * n_layers) so the stream's variance
        # does not grow with depth.
        residual_std = self.config.init_range / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if "norm" in name:
                continue  # LayerNorms keep their identity init
            if param.dim() < 2:
                nn.init.zeros_(param)
            elif name.endswith(("self_attn.out_proj.weight", "linear2.weight")):
                nn.init.normal_(param, std=residual_std)
            else:
                nn.init.normal_(param, std=self.config.init_range)

    def _hidden_states(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states (B, L, d_model) of a causal pass over `token_ids` (L <= context_size)."""
        length = token_ids.shape[1]
        positions = torch.arange(length, device=token_ids.device)
        if self.config.positions == "learned":
            position_vectors = self.position_embedding(positions)
        else:
            position_vectors = self.position_table[:length]
        x = self.dropout(self.token_embedding(token_ids) + position_vectors)
        causal_mask = nn.Transformer.generate_square_subsequent_mask(length, device=x.device, dtype=x.dtype)
        for block in self.blocks:
            x = block(x, src_mask=causal_mask, is_causal=True)
        return self.final_norm(x)

    def _with_context(self, input_ids: torch.Tensor, state) -> torch.Tensor:
        """The state's tokens followed by `input_ids`, cut to the last context_size tokens."""
        tokens = input_ids if state is None else torch.cat([state.to(input_ids.device), input_ids], dim=1)
        return last_tokens(tokens, self.config.context_size)

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, state=None):
        """Per-token negative log-likelihood (B, T) of `targets`, and the last `memory` tokens (or None)."""
        batch, steps = input_ids.shape
        if steps > self.config.context_size:
            raise NlprnnError(
                f"a chunk of {steps} tokens does not fit model.context_size={self.config.context_size}; "
                "use a shorter data.bptt or a larger model.context_size"
            )
        tokens = self._with_context(input_ids, state)
        hidden = self._hidden_states(tokens)[:, -steps:]  # the loss covers only the new positions
        logits = self.lm_head(hidden)
        # float32 log-softmax: a bfloat16 one would quantise the loss over a large vocabulary.
        nll = F.cross_entropy(logits.float().reshape(batch * steps, -1), targets.reshape(-1), reduction="none")
        new_state = last_tokens(tokens, self.config.memory) if self.config.memory > 0 else None
        return nll.reshape(batch, steps), new_state

    def next_token_logprobs(self, input_ids: torch.Tensor, state=None):
        """Log-probabilities (B, V) of the next token, and up to context_size - 1 tokens of context."""
        tokens = self._with_context(input_ids, state)
        last = self._hidden_states(tokens)[:, -1]
        logprobs = F.log_softmax(self.lm_head(last).float(), dim=-1)
        # One slot short of the context, so the next call's new token still fits beside all of it.
        new_state = last_tokens(tokens, self.config.context_size - 1)
        return logprobs, new_state

    def param_counts(self) -> dict[str, int]:
        embedding_softmax = [*self.token_embedding.parameters(), *self.lm_head.parameters()]
        if self.config.positions == "learned":
            embedding_softmax += list(self.position_embedding.parameters())
        return {"total": count_parameters(self), "embedding_softmax": count_parameters(embedding_softmax)}
