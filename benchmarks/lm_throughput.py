"""Training throughput and peak memory: nlprnn's loop vs a bare PyTorch loop, same model, same batches.

    python benchmarks/lm_throughput.py --config recipes/configs/lm/wikitext2_lstm.yaml --steps 40

The bare loop is the pytorch/examples word_language_model training loop (forward, cross-entropy, backward,
clip, manual SGD update, hidden state detached between chunks) run on the same nlprnn model and the same
BPTT batches. Each variant runs in its own process (so peak RSS belongs to it), alternating over
`--rounds`; a run's time is measured from the request of batch `--warmup` to the request of the batch after
the last, the same way for both. Target: loop / bare tokens/s >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


class Clock:
    """Timestamps of batch requests: the steady-state window is [warmup, steps)."""

    def __init__(self, warmup: int, steps: int):
        self.warmup, self.steps, self.times = warmup, steps, {}

    def tick(self, index: int) -> None:
        if index in (self.warmup, self.steps):
            self.times[index] = time.perf_counter()

    def seconds(self) -> float:
        return self.times[self.steps] - self.times[self.warmup]


def run_variant(variant: str, overrides: list[str], config: str, steps: int, warmup: int) -> dict:
    import torch
    from accelerate.utils import set_seed

    from nlprnn.config import load_config
    from nlprnn.metrics import peak_memory_bytes
    from nlprnn.models import build_model
    from nlprnn.models.common import detach_state
    from nlprnn.train.experiment import make_accelerator
    from nlprnn.train.loop import Trainer
    from nlprnn.train.tasks import LanguageModeling

    cfg = load_config(config, [*overrides, f"train.max_steps={steps + 1}", "train.grad_accum_steps=1",
                               "run.dir=/tmp/nlprnn-bench", "run.resume=false", "run.save_model=false",
                               "run.progress=false", "run.tracker=none"], task="lm")
    accelerator = make_accelerator(cfg)
    set_seed(cfg.train.seed)
    task = LanguageModeling(cfg, accelerator)
    model = build_model(cfg.model_name, cfg.model_config(**task.model_values()))
    clock = Clock(warmup, steps)
    batch_tokens = task.train_streams.local_batch_size * cfg.data.bptt

    if variant == "loop":
        batches = task.train_batches

        def timed(epoch, start=0):
            for index, batch in batches(epoch, start):
                clock.tick(index)
                yield index, batch

        task.train_batches = timed
        task.evaluate = lambda model, split: {"ppl": 1.0}  # time training only
        trainer = Trainer(task, model, cfg, accelerator)
        trainer.save_checkpoint = lambda: None
        trainer.fit()
    else:
        model.to(accelerator.device).train()
        lr, clip, state = cfg.train.lr, cfg.train.clip_norm, None
        for index, inputs, targets in task.train_streams.iter_from(0):
            clock.tick(index)
            if index == steps + 1:
                break
            inputs, targets = inputs.to(accelerator.device), targets.to(accelerator.device)
            model.zero_grad()
            nll, state = model(inputs, targets, detach_state(state))
            nll.mean().backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(p.grad, alpha=-lr)
    return {
        "variant": variant,
        "tokens_per_second": (steps - warmup) * batch_tokens / clock.seconds(),
        "peak_memory_bytes": peak_memory_bytes(accelerator.device),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "recipes/configs/lm/wikitext2_lstm.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", help="also write the figures as JSON here")
    parser.add_argument("--variant", choices=["bare", "loop"], help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.path=... model.hidden_size=650")
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.overrides, args.config, args.steps, args.warmup)))
        return

    runs = {"bare": [], "loop": []}
    for round_ in range(args.rounds):
        for variant in ("bare", "loop") if round_ % 2 == 0 else ("loop", "bare"):
            out = subprocess.run([sys.executable, __file__, "--variant", variant, "--config", args.config,
                                  "--steps", str(args.steps), "--warmup", str(args.warmup), *args.overrides],
                                 capture_output=True, text=True, cwd=REPO)
            if out.returncode != 0:
                sys.exit(f"{variant} run failed:\n{out.stderr[-3000:]}")
            result = json.loads(out.stdout.strip().splitlines()[-1])
            runs[variant].append(result)
            print(f"round {round_ + 1} {variant:>4}: {result['tokens_per_second']:8.0f} tokens/s, "
                  f"peak RSS {result['peak_memory_bytes'] / 2**20:6.0f} MiB", flush=True)

    def median(variant, key):
        return statistics.median(r[key] for r in runs[variant])

    ratio = median("loop", "tokens_per_second") / median("bare", "tokens_per_second")
    memory_ratio = median("loop", "peak_memory_bytes") / median("bare", "peak_memory_bytes")
    summary = {
        "benchmark": "lm_throughput",
        "config": args.config, "overrides": args.overrides, "steps": args.steps, "warmup": args.warmup,
        "bare_tokens_per_second": median("bare", "tokens_per_second"),
        "loop_tokens_per_second": median("loop", "tokens_per_second"),
        "throughput_ratio": ratio,
        "bare_peak_memory_bytes": median("bare", "peak_memory_bytes"),
        "loop_peak_memory_bytes": median("loop", "peak_memory_bytes"),
        "memory_ratio": memory_ratio,
        "runs": runs,
    }
    print(f"loop / bare throughput: {ratio:.3f} (target >= 0.95)   peak memory loop / bare: {memory_ratio:.3f}")
    if args.output:
        from nlprnn.io import atomic_write_json
        from nlprnn.metrics import hardware
        from nlprnn.results import command_line, git_commit, now_iso

        summary.update(hardware=hardware(), git_commit=git_commit(), command=command_line(), date=now_iso())
        atomic_write_json(args.output, summary)


if __name__ == "__main__":
    main()
