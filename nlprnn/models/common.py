"""Small helpers shared by the language models: config checks, state detaching, parameter counting, init.

Every LM in `nlprnn.models` follows one contract (see `RNNLM`), and the training loop relies on these
helpers to treat their recurrent states and parameters uniformly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from nlprnn.errors import NlprnnError

# Names accepted by `init_weights`; the model configs validate against this tuple.
INIT_SCHEMES = ("uniform", "xavier", "orthogonal", "kaiming")


def check_choices(config, prefix: str = "model") -> None:
    """Check the fields declared with `nlprnn.config.choice`, for configs built directly rather than from_dict."""
    for f in dataclasses.fields(config):
        choices = f.metadata.get("choices")
        value = getattr(config, f.name)
        if choices and value not in choices:
            raise NlprnnError(f"{prefix}.{f.name}: expected one of {', '.join(choices)}, got {value!r}")


def check_fields(config, positive: tuple[str, ...] = (), probabilities: tuple[str, ...] = ("dropout",),
                 positive_numbers: tuple[str, ...] = ("init_range",)) -> None:
    """The checks every model config shares: choices, positive sizes, probabilities, positive scales."""
    check_choices(config)
    for key in positive:
        if getattr(config, key) < 1:
            raise NlprnnError(f"model.{key}: expected a positive integer, got {getattr(config, key)!r}")
    for key in probabilities:
        if not 0.0 <= getattr(config, key) < 1.0:
            raise NlprnnError(f"model.{key}: expected a probability in [0, 1), got {getattr(config, key)!r}")
    for key in positive_numbers:
        if getattr(config, key) <= 0:
            raise NlprnnError(f"model.{key}: expected a positive number, got {getattr(config, key)!r}")


def check_filled_in(config, *keys: str) -> None:
    """Sizes a task fills in from its data (vocabulary sizes) must be set before the model is built."""
    for key in keys:
        if getattr(config, key) < 1:
            raise NlprnnError(f"model.{key}: expected a positive integer (the task sets it from its vocabulary), "
                              f"got {getattr(config, key)!r}")


def detach_state(state):
    """Cut the autograd graph behind a recurrent state so truncated BPTT stops at the chunk boundary.

    Handles whatever shape a model's state takes: None, a tensor, or (nested) tuples/lists of them.
    """
    if state is None:
        return None
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(detach_state(part) for part in state)
    raise TypeError(f"cannot detach a recurrent state of type {type(state).__name__}")


def count_parameters(module_or_params: nn.Module | Iterable[torch.Tensor]) -> int:
    """Number of scalars in the distinct parameter tensors; a tied weight is counted once."""
    params = module_or_params.parameters() if isinstance(module_or_params, nn.Module) else module_or_params
    distinct = {id(p): p for p in params}
    return sum(p.numel() for p in distinct.values())


def init_weights(module: nn.Module, scheme: str, init_range: float) -> None:
    """Initialise every embedding, linear layer and recurrent layer inside `module`, in place.

    Embeddings and linear layers (the input lookup table and the softmax/output layers) always get
    U(-init_range, init_range) as in Zaremba et al. (2014) and pytorch/examples: fan-based formulas make
    little sense for a table with one row per vocabulary word. The scheme decides the recurrent weights:

    - uniform:    U(-init_range, init_range) for input-to-hidden and hidden-to-hidden weights.
    - xavier:     Glorot-uniform for both, applied per gate block so each gate gets its own fan.
    - orthogonal: hidden-to-hidden orthogonal per gate block (its singular values are 1, so signals neither
                  explode nor vanish through time at init); input-to-hidden Glorot-uniform per gate.
    - kaiming:    He-uniform (ReLU gain) for both, per gate block; meant for `rnn_relu`.

    All biases start at zero. Under xavier and orthogonal an LSTM's forget-gate bias starts at 1 instead
    (Jozefowicz et al., 2015), so that cells remember by default early in training.
    """
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; expected one of {list(INIT_SCHEMES)}")
    for sub in module.modules():
        if isinstance(sub, nn.Embedding):
            nn.init.uniform_(sub.weight, -init_range, init_range)
        elif isinstance(sub, nn.Linear):
            nn.init.uniform_(sub.weight, -init_range, init_range)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.RNNBase):
            _init_recurrent(sub, scheme, init_range)


def _init_recurrent(rnn: nn.RNNBase, scheme: str, init_range: float) -> None:
    # PyTorch stacks the gates' matrices along dim 0 (LSTM: i, f, g, o; GRU: r, z, n), so per-gate init
    # works on equal row blocks of hidden_size each.
    hidden = rnn.hidden_size
    for name, param in rnn.named_parameters():
        if name.startswith("bias"):
            nn.init.zeros_(param)
            continue
        with torch.no_grad():
            for gate in param.split(hidden, dim=0):
                if scheme == "uniform":
                    nn.init.uniform_(gate, -init_range, init_range)
                elif scheme == "kaiming":
                    nn.init.kaiming_uniform_(gate, nonlinearity="relu")
                elif scheme == "orthogonal" and name.startswith("weight_hh"):
                    nn.init.orthogonal_(gate)
                else:
                    nn.init.xavier_uniform_(gate)
    if isinstance(rnn, nn.LSTM) and scheme in ("xavier", "orthogonal"):
        with torch.no_grad():
            # weight_ih and weight_hh each carry a bias that PyTorch adds together: set one of them.
            for name, param in rnn.named_parameters():
                if name.startswith("bias_ih"):
                    param[hidden : 2 * hidden].fill_(1.0)
