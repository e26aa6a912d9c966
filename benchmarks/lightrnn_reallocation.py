"""Light RNN word re-allocation: time, peak memory and cost of each solver on synthetic costs of real shape.

    python benchmarks/lightrnn_reallocation.py --sizes 10000 33000 100000 1000000 --timeout 1200 \\
        --solvers sparse greedy dense --candidates 8

For each vocabulary size V the table is ceil(sqrt V) x ceil(sqrt V), as in Light RNN. The costs imitate what
one pass over a corpus of `--tokens` tokens gives a trained model: word w occurs n_w times (Zipf, exponent 1),
and row_costs[w, i] = n_w * (log R + row bias + noise), lower on a few preferred rows per word. Preferred rows
are drawn from a skewed popularity (words compete for the same rows), and with probability `--affinity` one
of them is the word's current row (the model has learnt part of the current table). Columns likewise.

Each (V, solver) runs in its own process, so its peak RSS (getrusage) is its own; "data" is the peak before the
solver starts (the two cost matrices, float32 by default: 8 GB at V = 1M). Costs are compared with the dense
exact optimum where it was run (V <= --reference-max), otherwise with the sparse solver's. Targets: sparse
under 30 s at V = 33k, under 10 minutes and 16 GB at V = 1M on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SOLVERS = ("dense", "sparse", "sparse-plain", "greedy")  # the order they run in: dense is the reference


def synthetic_costs(vocab: int, rows: int, cols: int, tokens: float, affinity: float, seed: int, dtype,
                    preferred: int = 3):
    """(row_costs, col_costs, word_row, word_col): costs of the shape a training pass produces; see the docstring."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(1.0, tokens / (np.arange(1, vocab + 1) * (math.log(vocab) + 0.5772)))
    cells = rng.permutation(rows * cols)[:vocab]
    word_row, word_col = cells // cols, cells % cols

    def one_side(size, current):
        costs = np.empty((vocab, size), dtype=dtype)
        bias = rng.normal(0.0, 0.3, size)                        # rows the model predicts often cost less
        popularity = rng.dirichlet(np.full(size, 0.3))           # and words crowd onto the same few
        chunk = max(1, (1 << 22) // size)
        for lo in range(0, vocab, chunk):
            hi = min(vocab, lo + chunk)
            block = rng.standard_exponential((hi - lo, size), dtype=np.float32)
            block *= 0.5
            block += (math.log(size) + bias).astype(np.float32)
            favourite = rng.choice(size, size=(hi - lo, preferred), p=popularity)
            knows_current = rng.random(hi - lo) < affinity
            favourite[knows_current, 0] = current[lo:hi][knows_current]
            block[np.arange(hi - lo)[:, None], favourite] = rng.uniform(0.05, 1.5, (hi - lo, preferred))
            block *= counts[lo:hi, None].astype(np.float32)
            costs[lo:hi] = block
        return costs

    return one_side(rows, word_row), one_side(cols, word_col), word_row, word_col


def peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def run_one(args) -> dict:
    from nlprnn.models.reallocate import reallocate_cells

    side = math.ceil(math.sqrt(args.size))
    start = time.perf_counter()
    row_costs, col_costs, word_row, word_col = synthetic_costs(
        args.size, side, side, args.tokens, args.affinity, args.seed, np.dtype(args.dtype))
    generate_seconds = time.perf_counter() - start
    data_rss = peak_rss_bytes()
    print(json.dumps({"generate_seconds": generate_seconds}), file=sys.stderr, flush=True)
    if args.timeout:
        # The budget is the solver's alone (making 8 GB of synthetic costs at V = 1M takes minutes of its own);
        # SIGALRM's default action ends the process even inside scipy's compiled loops.
        signal.alarm(math.ceil(args.timeout))
    solver, _, rule = args.solver.partition("-")
    _, _, stats = reallocate_cells(row_costs, col_costs, word_row, word_col, side, side, solver=solver,
                                   candidates=args.candidates, candidate_rule=rule or "priced")
    return {"vocab": args.size, "rows": side, "cols": side, "solver": args.solver, "candidates": args.candidates,
            "dtype": args.dtype, "generate_seconds": generate_seconds, "data_rss_bytes": data_rss,
            "peak_rss_bytes": peak_rss_bytes(), **{k: v for k, v in stats.items() if k not in ("solver", "candidates")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 33000])
    parser.add_argument("--solvers", nargs="+", default=["sparse", "greedy", "dense"], choices=list(SOLVERS),
                        help="sparse-plain: the sparse solver with candidate_rule='plain' (no capacity prices)")
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--reference-max", type=int, default=10000,
                        help="largest V the dense exact solver is run for (it is O(n^3) and holds V x V floats)")
    parser.add_argument("--tokens", type=float, default=1e9, help="corpus size the Zipf counts are scaled to")
    parser.add_argument("--affinity", type=float, default=0.5,
                        help="probability that a word's current row (column) is among its preferred ones")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds allowed to each solver run (generating the costs is not counted)")
    parser.add_argument("--output", help="also write the figures as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--solver", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args)))
        return

    # Dense first: it is the reference the others are compared with.
    order = sorted(args.solvers, key=SOLVERS.index)
    runs, failures = [], []
    print(f"{'V':>9} {'solver':>12} {'seconds':>9} {'peak RSS MiB':>13} {'data MiB':>9} {'after/before':>13} "
          f"{'moved':>8}  cost / reference", flush=True)
    for size in args.sizes:
        reference = {}
        for solver in order:
            if solver == "dense" and size > args.reference_max:
                print(f"{size:>9} {solver:>12}   skipped (V > --reference-max {args.reference_max})", flush=True)
                continue
            command = [sys.executable, __file__, "--worker", "--size", str(size), "--solver", solver,
                       "--candidates", str(args.candidates), "--tokens", str(args.tokens),
                       "--affinity", str(args.affinity), "--dtype", args.dtype, "--seed", str(args.seed)]
            if args.timeout:
                command += ["--timeout", str(args.timeout)]
            out = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
            if out.returncode == -signal.SIGALRM:
                # The worker's first JSON line on stderr; warnings may come before it.
                generated = next(json.loads(line)["generate_seconds"] for line in out.stderr.splitlines()
                                 if line.startswith('{"generate_seconds"'))
                print(f"{size:>9} {solver:>12}   solver timed out after {args.timeout:.0f} s (costs generated in "
                      f"{generated:.0f} s)", flush=True)
                failures.append({"vocab": size, "solver": solver, "error": "timeout", "timeout": args.timeout,
                                 "generate_seconds": generated})
                continue
            if out.returncode != 0:
                print(f"{size:>9} {solver:>12}   failed (exit {out.returncode}): {out.stderr.strip()[-300:]}",
                      flush=True)
                failures.append({"vocab": size, "solver": solver, "error": out.stderr[-3000:]})
                continue
            run = json.loads(out.stdout.strip().splitlines()[-1])
            if solver in ("dense", "sparse") and "cost" not in reference:
                reference = {"name": solver, "cost": run["cost_after"]}
            if reference:
                run["reference"] = reference["name"]
                run["cost_vs_reference"] = run["cost_after"] / reference["cost"]
            runs.append(run)
            versus = f"{run['cost_vs_reference']:.6f} ({run['reference']})" if reference else "-"
            print(f"{size:>9} {solver:>12} {run['seconds']:9.2f} {run['peak_rss_bytes'] / 2**20:13.0f} "
                  f"{run['data_rss_bytes'] / 2**20:9.0f} {run['cost_after'] / run['cost_before']:13.6f} "
                  f"{run['words_moved']:8d}  {versus}", flush=True)

    if args.output:
        from nlprnn.io import atomic_write_json
        from nlprnn.metrics import hardware
        from nlprnn.results import command_line, git_commit, now_iso

        atomic_write_json(args.output, {
            "benchmark": "lightrnn_reallocation", "sizes": args.sizes, "solvers": args.solvers,
            "candidates": args.candidates, "tokens": args.tokens, "affinity": args.affinity, "dtype": args.dtype,
            "seed": args.seed, "runs": runs, "failures": failures, "hardware": hardware(),
            "git_commit": git_commit(), "command": command_line(), "date": now_iso()})
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
