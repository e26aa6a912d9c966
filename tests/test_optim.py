import math

import pytest
import torch

from nlprnn.config import TrainConfig
from nlprnn.train.optim import LRSchedule, build_optimizer


def test_weight_decay_skips_biases_and_gains():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    opt = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1, lr=1e-3))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.shape for p in decayed["params"]] == [(4, 3)]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3


def test_pretrained_parameters_get_their_own_learning_rate():
    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 4))
    opt = build_optimizer(model, TrainConfig(lr=2.0), pretrained={"0.weight"}, pretrained_lr_scale=0.1)
    LRSchedule(TrainConfig(lr=2.0, schedule="constant"), total_steps=None).apply(opt, 0)
    rates = {tuple(p.shape): group["lr"] for group in opt.param_groups for p in group["params"]}
    assert rates == {(5, 3): pytest.approx(0.2), (4, 3): 2.0, (4,): 2.0}


def test_freezing_drops_gradients_until_the_unfreeze_epoch():
    from nlprnn.errors import NlprnnError
    from nlprnn.train.loop import _frozen_parameters

    model = torch.nn.Sequential(torch.nn.Embedding(5, 3), torch.nn.Linear(3, 4))
    frozen = _frozen_parameters(model, {"0": 2, "1.bias": -1})
    assert [(tuple(p.shape), until) for p, until in frozen] == [((5, 3), 2), ((4,), -1)]
    with pytest.raises(NlprnnError, match="'rnn' names no parameters of the model; its modules are 0, 1"):
        _frozen_parameters(model, {"rnn": 1})


def test_warmup_then_cosine():
    s = LRSchedule(TrainConfig(lr=1.0, schedule="cosine", warmup_steps=10), total_steps=110)
    assert s.lr_at(0) == pytest.approx(0.1) and s.lr_at(9) == pytest.approx(1.0)
    assert s.lr_at(60) == pytest.approx(0.5) and s.lr_at(110) == pytest.approx(0.0)


def test_inverse_sqrt():
    s = LRSchedule(TrainConfig(lr=1.0, schedule="inverse_sqrt", warmup_steps=4), total_steps=None)
    assert [round(s.lr_at(i), 4) for i in (0, 3, 15)] == [0.25, 1.0, 0.5]


def test_plateau_anneals_and_round_trips():
    s = LRSchedule(TrainConfig(lr=20.0, schedule="plateau", plateau_factor=0.25), total_steps=None)
    for metric in (100.0, 90.0, 95.0):
        s.on_eval(metric)
    assert s.lr_at(1000) == 5.0
    t = LRSchedule(TrainConfig(lr=20.0, schedule="plateau", plateau_factor=0.25), total_steps=None)
    t.load_state_dict(s.state_dict())
    t.on_eval(91.0)
    assert t.lr_at(0) == 1.25 and math.isclose(t.best, 90.0)


def test_a_restarted_plateau_takes_the_next_evaluation_as_its_reference():
    s = LRSchedule(TrainConfig(lr=20.0, schedule="plateau", plateau_factor=0.25), total_steps=None)
    s.on_eval(100.0)
    s.restart_plateau()
    s.on_eval(400.0)  # worse than before the restart, yet no annealing
    assert s.lr_at(0) == 20.0 and s.best == 400.0
    s.on_eval(410.0)
    assert s.lr_at(0) == 5.0
