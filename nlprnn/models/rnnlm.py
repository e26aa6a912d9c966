"""Word-level recurrent language model: embedding -> LSTM/GRU/Elman RNN -> softmax (full or adaptive).

The architecture follows pytorch/examples' word_language_model (dropout on the embeddings, between layers
and on the output; optional weight tying, Press & Wolf 2017 / Inan et al. 2017). It also defines the LM
contract that the training loop and every other language model in `nlprnn.models` follow:

    forward(input_ids (B, T), targets (B, T), state=None) -> (nll (B, T) float32, new_state)
    next_token_logprobs(input_ids (B, T), state=None)    -> (logprobs (B, V) float32, new_state)
    param_counts() -> {"total": int, "embedding_softmax": int}
    config         -> the config dataclass the model was built from

`state=None` means "start from zeros"; returned states are NOT detached (the loop detaches between
truncated-BPTT chunks with `common.detach_state`).
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

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

CELLS = ("lstm", "gru", "rnn_tanh", "rnn_relu")
HEADS = ("full", "adaptive")
# Cluster boundaries used when `adaptive_cutoffs` is empty. Word counts are Zipfian, so the head cluster's
# 2000 most frequent words already cover most tokens and the costly tail clusters are rarely evaluated.
DEFAULT_ADAPTIVE_CUTOFFS = (2000, 10000)


@dataclass
class RNNLMConfig:
    vocab_size: int = 0  # filled in by the task from its vocabulary
    cell: str = choice("lstm", *CELLS)
    embedding_size: int = 200
    hidden_size: int = 200
    num_layers: int = 2
    dropout: float = 0.2  # on embeddings, between layers and on the RNN output
    tie_weights: bool = False  # output layer = embedding matrix; needs embedding_size == hidden_size
    init: str = choice("uniform", *INIT_SCHEMES, help="see nlprnn.models.common.init_weights")
    init_range: float = 0.1
    head: str = choice("full", *HEADS, help="adaptive: adaptive softmax (Grave et al., 2017), for big vocabularies")
    adaptive_cutoffs: list[int] = field(default_factory=list)  # empty: automatic from the vocabulary size
    adaptive_div_value: float = 4.0

    def __post_init__(self):
        # vocab_size may still be 0 here (the task fills it in later); RNNLM checks it and the cutoffs.
        check_fields(self, positive=("embedding_size", "hidden_size", "num_layers"))
        if self.tie_weights and self.embedding_size != self.hidden_size:
            raise NlprnnError(
                "model.tie_weights: tying the output layer to the embedding needs "
                f"model.embedding_size == model.hidden_size, got {self.embedding_size} and {self.hidden_size}; "
                "make them equal or set model.tie_weights=false"
            )
        if self.tie_weights and self.head == "adaptive":
            raise NlprnnError(
                "model.tie_weights: weight tying is not supported with model.head=adaptive "
                "(the adaptive softmax splits the output layer into clusters); use model.head=full or tie_weights=false"
            )
        if self.adaptive_div_value <= 1.0:
            raise NlprnnError(f"model.adaptive_div_value: expected a number > 1, got {self.adaptive_div_value!r}")
        if self.adaptive_cutoffs:
            cutoffs = self.adaptive_cutoffs
            if any(c < 1 for c in cutoffs) or sorted(set(cutoffs)) != list(cutoffs):
                raise NlprnnError(
                    f"model.adaptive_cutoffs: expected strictly increasing positive integers, got {cutoffs}"
                )
        if self.vocab_size and self.head == "adaptive":
            resolve_adaptive_cutoffs(self)


def resolve_adaptive_cutoffs(config: RNNLMConfig) -> list[int]:
    """The adaptive-softmax cluster boundaries for this vocabulary, checked against it.

    With no cutoffs given, keep the default boundaries that fall inside the vocabulary, so that a tiny test
    vocabulary still gets a valid (one-cluster-tail) adaptive softmax.
    """
    vocab_size = config.vocab_size
    if vocab_size < 2:
        raise NlprnnError(f"model.head=adaptive needs model.vocab_size >= 2, got {vocab_size}")
    cutoffs = list(config.adaptive_cutoffs)
    if not cutoffs:
        cutoffs = [c for c in DEFAULT_ADAPTIVE_CUTOFFS if c < vocab_size] or [max(1, vocab_size // 2)]
    if cutoffs[-1] >= vocab_size:
        raise NlprnnError(
            f"model.adaptive_cutoffs: every cutoff must be below model.vocab_size={vocab_size}, got {cutoffs}"
        )
    # Tail cluster i projects the hidden state down to hidden_size // div_value**(i+1) dimensions.
    smallest = int(config.hidden_size // config.adaptive_div_value ** len(cutoffs))
    if smallest < 1:
        raise NlprnnError(
            f"model.adaptive_cutoffs: {len(cutoffs)} tail clusters with model.adaptive_div_value="
            f"{config.adaptive_div_value} shrink model.hidden_size={config.hidden_size} to 0 dimensions; "
            "use fewer cutoffs, a smaller div_value or a larger hidden_size"
        )
    return cutoffs


class RNNLM(nn.Module):
    def __init__(self, config: RNNLMConfig):
        super().__init__()
        check_filled_in(config, "vocab_size")
        self.config = config

        self.embedding = nn.Embedding(config.vocab_size, config.embedding_size)
        self.dropout = nn.Dropout(config.dropout)
        # The fused nn.LSTM/GRU/RNN modules run cuDNN kernels on GPU. Their built-in dropout only acts
        # between layers, and PyTorch warns when it is set on a single layer.
        rnn_kwargs = dict(
            input_size=config.embedding_size,
            hidden_size=config.hidden_size,
            num_layers=config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
            batch_first=True,
        )
        if config.cell == "lstm":
            self.rnn = nn.LSTM(**rnn_kwargs)
        elif config.cell == "gru":
            self.rnn = nn.GRU(**rnn_kwargs)
        else:
            self.rnn = nn.RNN(nonlinearity=config.cell.removeprefix("rnn_"), **rnn_kwargs)

        if config.head == "adaptive":
            self.head = nn.AdaptiveLogSoftmaxWithLoss(
                config.hidden_size,
                config.vocab_size,
                cutoffs=resolve_adaptive_cutoffs(config),
                div_value=config.adaptive_div_value,
            )
        else:
            self.head = nn.Linear(config.hidden_size, config.vocab_size)
        init_weights(self, config.init, config.init_range)
        if config.tie_weights:
            # Tie after init so both names point at the one (embedding-initialised) tensor.
            self.head.weight = self.embedding.weight

    def _run_rnn(self, input_ids: torch.Tensor, state):
        """Embed and run the recurrent stack: hidden states (B, T, H) after output dropout, and the new state."""
        embedded = self.dropout(self.embedding(input_ids))
        output, new_state = run_rnn(self.rnn, embedded, state)
        return self.dropout(output), new_state

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor, state=None):
        """Per-token negative log-likelihood (B, T) of `targets` given `input_ids`, and the new state."""
        hidden, new_state = self._run_rnn(input_ids, state)
        batch, steps, _ = hidden.shape
        if self.config.head == "adaptive":
            # Under autocast, AdaptiveLogSoftmaxWithLoss mixes float32 and bfloat16 tensors in an index_copy_
            # that needs one dtype and fails; so it runs in float32 with autocast off.
            with torch.autocast(device_type=hidden.device.type, enabled=False):
                result = self.head(hidden.float().reshape(batch * steps, -1), targets.reshape(-1))
            nll = -result.output
        else:
            logits = self.head(hidden)
            # float32 log-softmax: a bfloat16 one would quantise the loss over a large vocabulary.
            nll = F.cross_entropy(logits.float().reshape(batch * steps, -1), targets.reshape(-1), reduction="none")
        return nll.reshape(batch, steps), new_state

    def next_token_logprobs(self, input_ids: torch.Tensor, state=None):
        """Log-probabilities (B, V) of the token after the last input position, and the new state."""
        hidden, new_state = self._run_rnn(input_ids, state)
        last = hidden[:, -1]
        if self.config.head == "adaptive":
            with torch.autocast(device_type=last.device.type, enabled=False):
                return self.head.log_prob(last.float()), new_state
        return F.log_softmax(self.head(last).float(), dim=-1), new_state

    def param_counts(self) -> dict[str, int]:
        embedding_softmax = [*self.embedding.parameters(), *self.head.parameters()]
        return {"total": count_parameters(self), "embedding_softmax": count_parameters(embedding_softmax)}
