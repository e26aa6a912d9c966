"""Small helpers shared by the language models: config checks, state detaching, parameter counting, init.

Every LM in `nlprnn.models` follows one contract (see `RNNLM`), and the training loop relies on these
helpers to treat their recurrent states and parameters uniformly.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterable

import torch
from torch import nn

from nlprnn.errors import NlprnnError

ONE_STEP_NATIVE_BELOW = 100  # rows; see run_rnn


def run_rnn(rnn: nn.RNNBase, inputs: torch.Tensor, state=None):
    """`rnn(inputs, state)` for batch-first `inputs` (B, T, D), with the CPU kernel that suits the call.

    On the CPU, PyTorch hands `nn.LSTM` to oneDNN's RNN primitive, which halves the time of whole sequences
    but has a per-call set-up that dominates one small time step: a 512-unit step (2 threads) takes 3.1 ms
    at batch 1 and 2.5 ms at batch 20 with it, 0.5 and 1.7 ms on PyTorch's own kernel; the two are even at
    batch 100 and oneDNN wins at 500 (15.8 vs 22.2 ms). So one-step calls on fewer than 100 rows (decoding
    one sentence, the tail of a batch as sentences finish, generation) take PyTorch's kernel. oneDNN also has
    no reduced-precision LSTM on many CPUs ("could not create a primitive descriptor"), so under CPU autocast
    (`--mixed_precision bf16`) the LSTM runs in float32.
    """
    if not (isinstance(rnn, nn.LSTM) and inputs.device.type == "cpu"):
        return rnn(inputs, state)
    with contextlib.ExitStack() as stack:
        if torch.is_autocast_enabled("cpu"):
            stack.enter_context(torch.autocast("cpu", enabled=False))
            inputs = inputs.float()
            if state is not None:  # e.g. a decoder's initial state, computed by a bf16 layer
                state = tuple(s.float() for s in state) if isinstance(state, tuple) else state.float()
        if inputs.shape[1] == 1 and inputs.shape[0] < ONE_STEP_NATIVE_BELOW and torch.backends.mkldnn.is_available():
            previous = torch.backends.mkldnn.set_flags(False, None, None, None)[0]
            stack.callback(torch.backends.mkldnn.set_flags, previous, None, None, None)
        return rnn(inputs, state)


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
