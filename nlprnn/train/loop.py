"""The one training loop, on HF Accelerate, for every task and model.

The loop knows nothing about tasks: a task turns a batch into a loss and a split into metrics (see
`tasks.py`). The loop owns everything around that — accumulation, clipping, the learning-rate schedule,
evaluation, early stopping, budgets, non-finite steps, checkpoints and exact resume.

Exact resume: a checkpoint is taken only at an optimizer-step boundary (no half-accumulated gradient is
lost) and holds the model, optimizer, RNG of every process and the Accelerate step counter
(`checkpoint.py`: safetensors and JSON, never pickles), the task's per-process carried state
(safetensors), and this loop's counters and data position (JSON). It is written under a temporary name
and renamed into place, so a kill at any moment leaves the previous checkpoint whole.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from nlprnn.config import ExperimentConfig
from nlprnn.errors import NlprnnError
from nlprnn.hub import save_pretrained
from nlprnn.io import atomic_write_json
from nlprnn.train.checkpoint import load_training_state, save_training_state
from nlprnn.train.optim import LRSchedule, build_optimizer


@dataclass
class TrainerState:
    step: int = 0  # optimizer steps taken (skipped non-finite steps included)
    epoch: int = 0  # epochs completed
    batch: int = 0  # next batch index within the current epoch
    best_metric: float | None = None
    best_step: int = -1
    evals_without_improvement: int = 0
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    train_seconds: float = 0.0  # time in training steps only (for tokens/s)
    wall_seconds: float = 0.0  # all of fit(): training, evaluation and checkpoints
    train_tokens: int = 0  # summed over processes
    stop_reason: str = ""
    history: list = field(default_factory=list)
    events: list = field(default_factory=list)  # what epoch-end hooks did (e.g. Light RNN re-allocations)


class Trainer:
    def __init__(self, task, model: torch.nn.Module, cfg: ExperimentConfig, accelerator,
                 pretrained: set[str] = frozenset()):
        """`pretrained`: names of transferred parameters (their rate is scaled by transfer.pretrained_lr_scale)."""
        self.task = task
        self.cfg = cfg
        self.tc = cfg.train
        self.accelerator = accelerator
        self.frozen = _frozen_parameters(model, cfg.transfer.freeze)
        optimizer = build_optimizer(model, cfg.train, pretrained, cfg.transfer.pretrained_lr_scale)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.steps_per_epoch = math.ceil(task.num_train_batches / self.tc.grad_accum_steps)
        total = self.tc.max_steps or self.tc.epochs * self.steps_per_epoch
        self.schedule = LRSchedule(cfg.train, total, task.higher_is_better)
        self.state = TrainerState()
        self.run_dir = Path(cfg.run.dir)
        self.checkpoint_dir = self.run_dir / "checkpoints"
        self.best_weights: dict | None = None
        self._checkpoint_due = False
        # Called as hook(trainer) at the end of an epoch after its evaluation, when training goes on; what a
        # hook changes in the model is in the checkpoint that follows, so a resumed run sees it too.
        self.epoch_end_hooks: list = []

    # ----------------------------------------------------------------------------------------------
    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def log(self, values: dict) -> None:
        self.accelerator.log(values, step=self.state.step)

    def fit(self) -> TrainerState:
        if self.cfg.run.resume:
            self.resume()
        st, tc, acc = self.state, self.tc, self.accelerator
        fit_start = time.perf_counter() - st.wall_seconds
        bar = tqdm(total=self.task.num_train_batches, initial=st.batch, dynamic_ncols=True, leave=False,
                   disable=not (acc.is_main_process and self.cfg.run.progress), desc=f"epoch {st.epoch + 1}")
        window_loss, window_tokens, window_time = 0.0, 0, 0.0
        while True:
            st.stop_reason = self._stop_reason()
            if st.stop_reason:
                break
            for index, batch in self.task.train_batches(st.epoch, start=st.batch):
                t0 = time.perf_counter()
                self.model.train()
                with acc.accumulate(self.model):
                    loss, tokens = self.task.train_loss(self.model, batch)
                    acc.backward(loss)
                    stepped = acc.sync_gradients
                    # One host sync per step (it also ends the step's GPU work, so the timing is right).
                    loss_value = self._optimizer_step(loss) if stepped else float(loss.detach())
                elapsed = time.perf_counter() - t0
                st.batch = index + 1
                st.train_seconds += elapsed
                st.train_tokens += tokens * acc.num_processes
                window_loss += loss_value * tokens
                window_tokens += tokens
                window_time += elapsed
                bar.update(1)
                if not stepped:
                    continue
                st.wall_seconds = time.perf_counter() - fit_start
                if st.step % tc.log_every == 0 and window_tokens:
                    mean = window_loss / window_tokens
                    speed = window_tokens * acc.num_processes / window_time
                    lr = self.optimizer.param_groups[0]["lr"]
                    shown = {"loss": f"{mean:.3f}"}
                    logged = {"train/loss": mean}
                    if self.task.loss_per_token:
                        ppl = math.exp(min(mean, 50))
                        shown["ppl"], logged["train/ppl"] = f"{ppl:.1f}", ppl
                    bar.set_postfix(**shown, tok_s=f"{speed:.0f}")
                    self.log({**logged, "train/tokens_per_second": speed, "train/lr": lr,
                              "train/grad_norm": self._last_grad_norm})
                    if acc.is_main_process and not self.cfg.run.progress:
                        # Without the bar (logs to a file, as in pytorch/examples' log_interval) a line shows progress.
                        figures = " | ".join(f"{k} {v}" for k, v in shown.items())
                        print(f"step {st.step} epoch {st.epoch + 1} batch {st.batch}/{self.task.num_train_batches}"
                              f" | {figures} | lr {lr:.3g} | {speed:,.0f} tokens/s"
                              f" | {st.wall_seconds / 60:.1f} min", flush=True)
                    window_loss, window_tokens, window_time = 0.0, 0, 0.0
                if tc.eval_every and st.step % tc.eval_every == 0:
                    self.evaluate()
                if tc.checkpoint_every and st.step % tc.checkpoint_every == 0:
                    self._checkpoint_due = True
                st.stop_reason = self._stop_reason()
                if st.stop_reason:
                    break  # the checkpoint after the final evaluation below covers this step
                if self._checkpoint_due:
                    self.save_checkpoint()
                _fault_injection(st.step)
            else:
                st.epoch += 1
                st.batch = 0
                bar.reset()
                bar.set_description(f"epoch {st.epoch + 1}")
                if not tc.eval_every:
                    self.evaluate()
                    self._checkpoint_due = True
                if self.epoch_end_hooks and not self._stop_reason():
                    for hook in self.epoch_end_hooks:
                        hook(self)
                    self._checkpoint_due = True
                if self._at_step_boundary() and self._checkpoint_due and st.epoch < tc.epochs:
                    self.save_checkpoint()
        bar.close()
        # The final weights are a candidate too, e.g. when max_steps ends training between evaluations.
        if not st.history or st.history[-1]["step"] != st.step:
            self.evaluate()
        st.wall_seconds = time.perf_counter() - fit_start
        if self._at_step_boundary():
            self.save_checkpoint()
        return st

    # ----------------------------------------------------------------------------------------------
    _last_grad_norm = 0.0

    def _optimizer_step(self, loss: torch.Tensor) -> float:
        """Clip, check, step; returns the loss as a float."""
        st, acc = self.state, self.accelerator
        self.schedule.apply(self.optimizer, st.step)
        for parameter, until in self.frozen:
            # Frozen by dropping the gradient (after DDP's all-reduce, before clipping): the optimizer skips a
            # parameter without one, and DDP never sees requires_grad change mid-run.
            if until < 0 or st.epoch < until:
                parameter.grad = None
        max_norm = self.tc.clip_norm if self.tc.clip_norm > 0 else float("inf")
        grad_norm = acc.clip_grad_norm_(self.model.parameters(), max_norm)
        loss_value, grad_norm = torch.stack([loss.detach().float(), grad_norm.float()]).tolist()
        self._last_grad_norm = grad_norm
        # fp16's loss scaler skips overflowing steps by itself; an infinite gradient there is routine.
        fp16 = acc.mixed_precision == "fp16"
        finite = math.isfinite(loss_value) and (fp16 or math.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            st.nonfinite_in_a_row = 0
        else:
            st.nonfinite_in_a_row += 1
            st.nonfinite_total += 1
        self.optimizer.zero_grad(set_to_none=True)
        st.step += 1
        if st.nonfinite_in_a_row >= self.tc.max_nonfinite:
            last = self.latest_checkpoint()
            raise NlprnnError(
                f"training diverged: {st.nonfinite_in_a_row} non-finite losses or gradients in a row at step "
                f"{st.step} (train.max_nonfinite={self.tc.max_nonfinite}); no update was applied from them. "
                f"Last good checkpoint: {last or 'none'}. Try a lower train.lr or train.clip_norm."
            )
        return loss_value

    def _stop_reason(self) -> str:
        """Why training should stop now ("" to go on); checked again after a resume with new limits."""
        st, tc = self.state, self.tc
        if st.epoch >= tc.epochs:
            return "epochs"
        if tc.max_steps and st.step >= tc.max_steps:
            return "max_steps"
        if tc.early_stopping_patience and st.evals_without_improvement >= tc.early_stopping_patience:
            return "early_stopping"
        if tc.max_minutes and self._agree(st.wall_seconds > tc.max_minutes * 60):
            return "max_minutes"
        return ""

    def _at_step_boundary(self) -> bool:
        return self.accelerator.step % self.tc.grad_accum_steps == 0

    def _agree(self, flag: bool) -> bool:
        """The same decision on every process (each has its own clock)."""
        if self.accelerator.num_processes == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(t, reduction="max").item())

    # ----------------------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        st = self.state
        metrics = self.task.evaluate(self.model, "valid")
        value = metrics[self.task.main_metric]
        better = self.task.higher_is_better
        improved = st.best_metric is None or (value > st.best_metric if better else value < st.best_metric)
        self.schedule.on_eval(value)
        st.history.append({"step": st.step, "epoch": st.epoch, **{f"valid_{k}": v for k, v in metrics.items()}})
        self.log({f"valid/{k}": v for k, v in metrics.items()})
        if improved:
            st.best_metric, st.best_step, st.evals_without_improvement = value, st.step, 0
            self.best_weights = {k: v.detach().to("cpu", copy=True) for k, v in self.unwrapped.state_dict().items()}
            if self.cfg.run.save_model and self.accelerator.is_main_process:
                save_pretrained(self.unwrapped, self.run_dir / "model", **self.task.checkpoint_files())
        else:
            st.evals_without_improvement += 1
        if self.accelerator.is_main_process:
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
            tqdm.write(f"step {st.step} ({self.epochs_done:.2f} epochs): valid {shown}{' (best)' if improved else ''}")
        return metrics

    @property
    def epochs_done(self) -> float:
        """Epochs trained, fractional: a budget or a step limit stops mid-epoch (logged and in the run record)."""
        return self.state.epoch + self.state.batch / max(self.task.num_train_batches, 1)

    def restore_best(self) -> None:
        """Put the weights of the best evaluation back (training may have ended past them)."""
        if self.best_weights is not None:
            self.unwrapped.load_state_dict(self.best_weights)

    # ----------------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        done = [p for p in self.checkpoint_dir.glob("step-*") if (p / "trainer_state.json").exists()]
        return max(done, key=lambda p: int(p.name.split("-")[1])) if done else None

    def save_checkpoint(self) -> Path:
        acc, st = self.accelerator, self.state
        self._checkpoint_due = False
        final = self.checkpoint_dir / f"step-{st.step:08d}"
        tmp = self.checkpoint_dir / f".tmp-step-{st.step:08d}"
        if acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        save_training_state(tmp, acc, self.model, self.optimizer)
        save_file(self.task.state_tensors(), str(tmp / f"task_state_{acc.process_index}.safetensors"))
        acc.wait_for_everyone()
        if acc.is_main_process:
            atomic_write_json(tmp / "trainer_state.json", {
                "trainer": dataclasses.asdict(st),
                "schedule": self.schedule.state_dict(),
                "num_processes": acc.num_processes,
            })
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in self.checkpoint_dir.glob("step-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def resume(self) -> bool:
        path = self.latest_checkpoint()
        if path is None:
            return False
        acc = self.accelerator
        saved = json.loads((path / "trainer_state.json").read_text())
        if saved["num_processes"] != acc.num_processes:
            raise NlprnnError(f"{path}: written by {saved['num_processes']} processes, resumed with "
                              f"{acc.num_processes}; resume with the same number (the BPTT streams differ)")
        load_training_state(path, acc, self.model, self.optimizer)
        task_file = path / f"task_state_{acc.process_index}.safetensors"
        self.task.load_state_tensors(load_file(str(task_file)))
        self.state = TrainerState(**{**saved["trainer"], "stop_reason": ""})
        self.schedule.load_state_dict(saved["schedule"])
        best = self.run_dir / "model" / "model.safetensors"
        if self.state.best_step >= 0 and best.exists():
            from nlprnn.hub import load_state_dict_checked

            load_state_dict_checked(model := _clone_structure(self.unwrapped), best)
            self.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if acc.is_main_process:
            tqdm.write(f"resumed from {path} (step {self.state.step}, epoch {self.state.epoch}, "
                       f"batch {self.state.batch})")
        return True


def _frozen_parameters(model: torch.nn.Module, freeze: dict) -> list[tuple[torch.nn.Parameter, int]]:
    """(parameter, epoch it starts training, -1 = never) for every parameter under a frozen module prefix."""
    frozen = []
    for prefix, until in freeze.items():
        matched = [(p, int(until)) for name, p in model.named_parameters() if name == prefix
                   or name.startswith(prefix + ".")]
        if not matched:
            top = sorted({name.split(".")[0] for name, _ in model.named_parameters()})
            raise NlprnnError(f"transfer.freeze: {prefix!r} names no parameters of the model; its modules are "
                              f"{', '.join(top)}")
        frozen += matched
    return frozen


def _clone_structure(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model)


def _fault_injection(step: int) -> None:
    """Tests kill the process hard after a given step to prove resume is exact (NLPRNN_KILL_AFTER_STEP)."""
    target = os.environ.get("NLPRNN_KILL_AFTER_STEP")
    if target and step == int(target):
        os._exit(137)
