"""Light RNN vs LSTM language models: embedding + softmax parameters, training speed and peak memory.

    python benchmarks/lightrnn_speed.py --vocab-sizes 10000 33000 100000 --steps 20 --json lightrnn_speed.json

Table 1 counts parameters (`model.param_counts()`) of a 2-layer Light RNN and a 2-layer full-softmax LSTM with
E = H, for each V in `--vocab-sizes` (default 10k, 33k, 100k, 1M) and E = H in `--sizes` (default 200, 1000);
the LSTM is counted untied and with its output layer tied to the embedding. Nothing is trained.

Table 2 times training steps (forward, loss = nll.mean(), backward, clip_grad_norm_, SGD update; the state
detached between steps) of the Light RNN, the full-softmax LSTM and the adaptive-softmax LSTM (its default
cutoffs) at E = H = `--speed-size`, on contiguous streams of synthetic Zipf-distributed word ids (exponent 1;
id = frequency rank), so that inputs[t + 1] = targets[t] as in real LM batches (default V: 10k, 33k, 100k).
Each (V, model) runs in its own process, so its peak RSS (getrusage) is its own; the first `--warmup` steps
are not timed. Importing torch alone peaks at ~300 MiB, which hides a small model's memory: "above import" is
the peak beyond that. On a busy machine use `--threads 1`: contended threads slow tiny steps many times over.

Target (the Light RNN issue): at V = 33k, E = H = 200, 2 layers, the Light RNN trains >= 4x faster (tokens/s)
than the full-softmax LSTM, with >= 80x fewer embedding + softmax parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARAM_VOCABS = [10_000, 33_000, 100_000, 1_000_000]
SPEED_VOCABS = [10_000, 33_000, 100_000]  # a 1M-word full softmax needs B*T*V logits: GBs per step
MODELS = {"lightrnn": "Light RNN", "lstm": "LSTM full", "adaptive": "LSTM adaptive"}
TARGET = {"vocab": "33k", "size": 200, "num_layers": 2, "min_speedup": 4.0, "min_param_ratio": 80.0}
TARGET_TEXT = ("target: at V = 33k, E = H = 200, 2 layers, Light RNN >= 4x the full-softmax LSTM's tokens/s "
               "with >= 80x fewer embedding+softmax parameters")


def is_target_row(vocab: int, size: int, num_layers: int) -> bool:
    return round(vocab / 1000) == 33 and size == TARGET["size"] and num_layers == TARGET["num_layers"]


def model_values(name: str, vocab: int, size: int, num_layers: int) -> tuple[str, dict]:
    """(registry name, config values) of each compared model."""
    values = dict(vocab_size=vocab, embedding_size=size, hidden_size=size, num_layers=num_layers)
    if name == "lightrnn":
        return "lightrnn", values
    # Empty adaptive_cutoffs: RNNLM's own defaults (2000, 10000), clipped to the vocabulary.
    return "lstm", {**values, "tie_weights": False, "head": "adaptive" if name == "adaptive" else "full"}


def param_row(vocab: int, size: int, num_layers: int) -> dict:
    import torch

    from nlprnn.models import build_model

    name, values = model_values("lightrnn", vocab, size, num_layers)
    light = build_model(name, **values)
    name, values = model_values("lstm", vocab, size, num_layers)
    # A full softmax at V = 1M, E = H = 1000 is 2e9 parameters (8 GB of float32): built on the meta device its
    # tensors have shapes and no storage. The Light RNN cannot be (its word table checks real values), nor
    # does it need to be: it is O(sqrt V).
    with torch.device("meta"):
        untied = build_model(name, **values).param_counts()
        tied = build_model(name, **{**values, "tie_weights": True}).param_counts()
    counts = light.param_counts()
    row = {"vocab": vocab, "size": size, "num_layers": num_layers, "rows": light.num_rows, "cols": light.num_cols,
           "lightrnn": counts, "lstm": untied, "lstm_tied": tied}
    for key, lstm in (("lstm", untied), ("lstm_tied", tied)):
        row[f"{key}_embedding_softmax_ratio"] = lstm["embedding_softmax"] / counts["embedding_softmax"]
        row[f"{key}_total_ratio"] = lstm["total"] / counts["total"]
    return row


def print_params(rows: list[dict]) -> None:
    print(f"Embedding + softmax parameters, {rows[0]['num_layers']} layers ({TARGET_TEXT})")
    print(f"{'V':>9} {'E=H':>5} {'LSTM':>7} {'LSTM emb+sm':>14} {'LightRNN emb+sm':>16} {'ratio':>8} "
          f"{'LSTM total':>14} {'LightRNN total':>15} {'ratio':>7}")
    for row in rows:
        for key, label in (("lstm", "untied"), ("lstm_tied", "tied")):
            print(f"{row['vocab']:>9} {row['size']:>5} {label:>7} {row[key]['embedding_softmax']:>14,} "
                  f"{row['lightrnn']['embedding_softmax']:>16,} {row[f'{key}_embedding_softmax_ratio']:>8.1f} "
                  f"{row[key]['total']:>14,} {row['lightrnn']['total']:>15,} {row[f'{key}_total_ratio']:>7.2f}")
    print(flush=True)


def zipf_stream(vocab: int, batch: int, length: int, seed: int):
    """(batch, length) word ids, P(id = k) proportional to 1 / (k + 1), from a generator of its own."""
    import torch

    weights = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(weights, batch * length, replacement=True, generator=generator).view(batch, length)


def run_worker(args) -> dict:
    import torch

    from nlprnn.metrics import peak_memory_bytes
    from nlprnn.models import build_model
    from nlprnn.models.common import detach_state

    torch.set_num_threads(args.threads)
    import_rss = peak_memory_bytes()
    torch.manual_seed(args.seed)
    name, values = model_values(args.model, args.vocab, args.speed_size, args.num_layers)
    model = build_model(name, **values).train()
    steps, bptt = args.warmup + args.steps, args.bptt
    # One contiguous stream per batch row: step i reads [iT, iT + T] so x[t + 1] = y[t], within and across
    # steps, which is what the Light RNN's one-pass (interleaved) forward needs.
    stream = zipf_stream(args.vocab, args.batch_size, steps * bptt + 1, args.seed)
    lr, clip, state, start = 20.0, 0.25, None, None  # pytorch/examples' word_language_model values
    for step in range(steps):
        if step == args.warmup:
            start = time.perf_counter()
        inputs, targets = stream[:, step * bptt:(step + 1) * bptt], stream[:, step * bptt + 1:(step + 1) * bptt + 1]
        model.zero_grad(set_to_none=True)
        nll, state = model(inputs, targets, detach_state(state))
        nll.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:  # an adaptive tail cluster no target fell into has none
                    p.add_(p.grad, alpha=-lr)
    seconds = time.perf_counter() - start
    return {"model": args.model, "vocab": args.vocab, "size": args.speed_size,
            "tokens_per_second": args.steps * args.batch_size * bptt / seconds, "seconds": seconds,
            "peak_rss_bytes": peak_memory_bytes(), "import_rss_bytes": import_rss,
            "param_counts": model.param_counts(), "threads": torch.get_num_threads(),
            "adaptive_cutoffs": list(model.head.cutoffs[:-1]) if args.model == "adaptive" else None}


def run_speed(args, vocab: int, failures: list) -> dict:
    runs = {}
    for name in MODELS:
        command = [sys.executable, __file__, "--worker", "--model", name, "--vocab", str(vocab),
                   "--speed-size", str(args.speed_size), "--num-layers", str(args.num_layers),
                   "--batch-size", str(args.batch_size), "--bptt", str(args.bptt), "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--threads", str(args.threads), "--seed", str(args.seed)]
        try:
            out = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=args.timeout)
            error = None if out.returncode == 0 else f"exit {out.returncode}: {out.stderr.strip()[-3000:]}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {args.timeout:.0f} s"
        if error:
            print(f"{vocab:>9}  {MODELS[name]:<14} failed ({error[-300:]})", flush=True)
            failures.append({"vocab": vocab, "model": name, "error": error})
            continue
        run = runs[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{vocab:>9}  {MODELS[name]:<14} {run['tokens_per_second']:>10.0f} "
              f"{run['peak_rss_bytes'] / 2**20:>13.0f} {(run['peak_rss_bytes'] - run['import_rss_bytes']) / 2**20:>14.0f}",
              flush=True)
    row = {"vocab": vocab, "size": args.speed_size, "num_layers": args.num_layers, "runs": runs}
    if "lightrnn" in runs:
        light = runs["lightrnn"]
        for other in ("lstm", "adaptive"):
            if other in runs:
                row[f"speedup_vs_{other}"] = light["tokens_per_second"] / runs[other]["tokens_per_second"]
        if "lstm" in runs:
            row["memory_ratio_lstm_vs_lightrnn"] = runs["lstm"]["peak_rss_bytes"] / light["peak_rss_bytes"]
        ratios = [f"vs full {row['speedup_vs_lstm']:.2f}x" if "speedup_vs_lstm" in row else None,
                  f"vs adaptive {row['speedup_vs_adaptive']:.2f}x" if "speedup_vs_adaptive" in row else None]
        memory = row.get("memory_ratio_lstm_vs_lightrnn")
        print(f"{'':>9}  Light RNN tokens/s {', '.join(r for r in ratios if r)}"
              + (f"; peak RSS full / Light RNN {memory:.2f}x" if memory else ""), flush=True)
    return row


def target_verdict(params: list[dict], speed: list[dict]) -> dict | None:
    """Whether the issue's target is met, from the rows measured at its V and size (None: not measured)."""
    param_rows = [r for r in params if is_target_row(r["vocab"], r["size"], r["num_layers"])]
    speed_rows = [r for r in speed if is_target_row(r["vocab"], r["size"], r["num_layers"])
                  and "speedup_vs_lstm" in r]
    if not param_rows and not speed_rows:
        return None
    verdict = {**TARGET}
    if param_rows:
        verdict["param_ratio"] = param_rows[0]["lstm_embedding_softmax_ratio"]
        verdict["param_ratio_met"] = verdict["param_ratio"] >= TARGET["min_param_ratio"]
    if speed_rows:
        verdict["speedup"] = speed_rows[0]["speedup_vs_lstm"]
        verdict["speedup_met"] = verdict["speedup"] >= TARGET["min_speedup"]
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-sizes", type=int, nargs="+",
                        help=f"V for both tables (default: {PARAM_VOCABS} for parameters, {SPEED_VOCABS} for speed)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 1000], help="E = H for the parameter table")
    parser.add_argument("--speed-size", type=int, help="E = H for the speed table (default: the first of --sizes)")
    parser.add_argument("--num-layers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per model and V")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads in each worker")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None, help="seconds allowed to each worker")
    parser.add_argument("--params-only", action="store_true", help="print the parameter table only (no training)")
    parser.add_argument("--json", "--output", dest="json", help="also write every figure as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=list(MODELS), help=argparse.SUPPRESS)
    parser.add_argument("--vocab", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.speed_size = args.speed_size or args.sizes[0]
    if args.worker:
        print(json.dumps(run_worker(args)))
        return

    params = [param_row(vocab, size, args.num_layers)
              for size in args.sizes for vocab in args.vocab_sizes or PARAM_VOCABS]
    print_params(params)

    speed, failures = [], []
    if not args.params_only:
        print(f"Training speed: batch {args.batch_size}, bptt {args.bptt}, E = H = {args.speed_size}, "
              f"{args.num_layers} layers, {args.threads} threads, {args.steps} timed steps after {args.warmup}")
        print(f"{'V':>9}  {'model':<14} {'tokens/s':>10} {'peak RSS MiB':>13} {'above import':>14}")
        speed = [run_speed(args, vocab, failures) for vocab in args.vocab_sizes or SPEED_VOCABS]
        print()

    verdict = target_verdict(params, speed)
    if verdict:
        found = [f"{verdict['param_ratio']:.1f}x fewer parameters" if "param_ratio" in verdict
                 else "parameters not counted",
                 f"{verdict['speedup']:.2f}x tokens/s" if "speedup" in verdict else "speed not measured"]
        met = all(v for k, v in verdict.items() if k.endswith("_met"))
        print(f"{TARGET_TEXT}: {', '.join(found)} -> {'met' if met else 'NOT met'} as far as measured")
    else:
        print(f"{TARGET_TEXT}: not measured in this run")

    if args.json:
        import torch

        from nlprnn.io import atomic_write_json
        from nlprnn.metrics import hardware
        from nlprnn.results import command_line, git_commit, now_iso

        settings = {k: getattr(args, k) for k in ("sizes", "speed_size", "num_layers", "batch_size", "bptt",
                                                   "steps", "warmup", "threads", "seed", "params_only")}
        atomic_write_json(args.json, {
            "benchmark": "lightrnn_speed", "settings": settings, "params": params, "speed": speed,
            "failures": failures, "target": verdict, "target_text": TARGET_TEXT, "hardware": hardware(),
            "torch": torch.__version__, "argv": sys.argv, "git_commit": git_commit(), "command": command_line(),
            "date": now_iso()})
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
