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
