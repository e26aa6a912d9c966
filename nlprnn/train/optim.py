"""Optimizers and learning-rate schedules.

The schedule is a pure function of the optimizer step (warm-up, then constant / cosine / inverse
square root) times a plateau factor that drops when validation stops improving. Its whole state is a
few numbers, saved as JSON with the trainer state, so a resumed run sets exactly the same rates.
"""

from __future__ import annotations

import math

import torch

from nlprnn.config import TrainConfig


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, pretrained: set[str] = frozenset(),
                    pretrained_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Parameter groups by (weight decay or not) x (pretrained or not); `lr_scale` scales a group's rate."""
    # Weight decay on biases and normalisation gains only shrinks them toward zero for no benefit.
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decays = not (p.ndim < 2 or name.endswith(".bias"))
            groups.setdefault((decays, name in pretrained), []).append(p)
    groups = [{"params": params, "weight_decay": cfg.weight_decay if decays else 0.0,
               "lr_scale": pretrained_lr_scale if is_pretrained else 1.0}
              for (decays, is_pretrained), params in sorted(groups.items(), reverse=True)]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas))
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


class LRSchedule:
    """lr(step) = base_lr * warmup(step) * shape(step) * plateau_scale."""

    def __init__(self, cfg: TrainConfig, total_steps: int | None, higher_is_better: bool = False):
        self.cfg = cfg
        self.total_steps = total_steps
        self.higher_is_better = higher_is_better
        self.plateau_scale = 1.0
        self.best: float | None = None
        self.bad_evals = 0

    def lr_at(self, step: int) -> float:
        cfg = self.cfg
        warmup = cfg.warmup_steps
        factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
        if cfg.schedule == "cosine":
            total = self.total_steps or 0
            if total <= warmup:
                raise ValueError("cosine schedule needs train.max_steps (or epochs) longer than warm-up")
            progress = min(1.0, max(0.0, (step - warmup) / (total - warmup)))
            factor *= 0.5 * (1.0 + math.cos(math.pi * progress))
        elif cfg.schedule == "inverse_sqrt" and step + 1 > max(warmup, 1):
            factor *= math.sqrt(max(warmup, 1) / (step + 1))
        lr = cfg.lr * factor * self.plateau_scale
        return max(lr, cfg.min_lr) if cfg.schedule != "constant" or cfg.min_lr else lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def on_eval(self, metric: float) -> None:
        """Reduce-on-plateau bookkeeping; only the `plateau` schedule acts on it."""
        improved = self.best is None or (metric > self.best if self.higher_is_better else metric < self.best)
        if improved:
            self.best, self.bad_evals = metric, 0
            return
        self.bad_evals += 1
        if self.cfg.schedule == "plateau" and self.bad_evals > self.cfg.plateau_patience:
            self.plateau_scale *= self.cfg.plateau_factor
            self.bad_evals = 0

    def restart_plateau(self) -> None:
        """Forget the best metric so far (the next evaluation becomes the reference); the scale is kept."""
        self.best, self.bad_evals = None, 0

    def state_dict(self) -> dict:
        return {"plateau_scale": self.plateau_scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict) -> None:
        self.plateau_scale = state["plateau_scale"]
        self.best = state["best"]
        self.bad_evals = state["bad_evals"]
