"""Training checkpoints: safetensors and JSON only; restoring them continues exactly; pickles are refused."""

import pickle
import random

import numpy as np
import pytest
import torch
from accelerate import Accelerator

from nlprnn.errors import NlprnnError
from nlprnn.train.checkpoint import load_training_state, save_training_state


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(7, 5)
        self.hidden = torch.nn.Linear(5, 5)
        self.out = torch.nn.Linear(5, 7)
        self.out.weight = self.embed.weight  # tied, as in the language models
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.out(self.drop(torch.tanh(self.hidden(self.embed(x)))))


def train_steps(model, optimizer, n):
    losses = []
    for _ in range(n):
        x = torch.randint(0, 7, (4, 3))
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), x.flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        # Python's and NumPy's generators are part of the state too.
        losses.append((loss.item(), random.random(), float(np.random.rand())))
    return losses


@pytest.mark.parametrize("make_optimizer", [
    lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.95)),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-4),
], ids=["adam", "sgd-momentum"])
def test_restored_state_continues_exactly_and_nothing_is_pickled(tmp_path, fresh_accelerate_state, monkeypatch,
                                                                 make_optimizer):
    torch.manual_seed(0)
    acc = Accelerator(cpu=True)
    model = Tiny()
    model, optimizer = acc.prepare(model, make_optimizer(model.parameters()))
    train_steps(model, optimizer, 3)
    acc.step = 6
    save_training_state(tmp_path, acc, model, optimizer)
    assert {p.suffix for p in tmp_path.iterdir()} <= {".json", ".safetensors"}
    expected = train_steps(model, optimizer, 3)
    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}

    def refuse(*args, **kwargs):
        raise AssertionError("a training checkpoint must load without torch.load / pickle")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    fresh = Tiny()
    fresh_optimizer = make_optimizer(fresh.parameters())
    acc.step = 0
    load_training_state(tmp_path, acc, fresh, fresh_optimizer)
    assert acc.step == 6
    assert type(fresh_optimizer.param_groups[0].get("betas", ())) is tuple
    assert train_steps(fresh, fresh_optimizer, 3) == expected
    assert all(torch.equal(v, expected_weights[k]) for k, v in fresh.state_dict().items())


def test_a_pickled_accelerate_checkpoint_is_refused_without_being_opened(tmp_path, fresh_accelerate_state):
    class Payload:
        def __reduce__(self):
            target = str(tmp_path / "pwned")
            return (exec, (f"open({target!r}, 'w').write('ran')",))

    (tmp_path / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    acc = Accelerator(cpu=True)
    model = Tiny()
    with pytest.raises(NlprnnError, match="pickled format"):
        load_training_state(tmp_path, acc, model, torch.optim.SGD(model.parameters(), lr=0.1))
    assert not (tmp_path / "pwned").exists()


def test_a_changed_optimizer_is_named(tmp_path, fresh_accelerate_state):
    acc = Accelerator(cpu=True)
    model = Tiny()
    save_training_state(tmp_path, acc, model, torch.optim.SGD(model.parameters(), lr=0.1))
    groups = [{"params": [model.embed.weight]}, {"params": list(model.hidden.parameters()) + [model.out.bias]}]
    with pytest.raises(NlprnnError, match="parameter groups"):
        load_training_state(tmp_path, acc, model, torch.optim.SGD(groups, lr=0.1))
