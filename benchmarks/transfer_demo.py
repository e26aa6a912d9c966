"""Does language-model pretraining help the tagger? Random vs LM-initialised, same budget, same seeds.

    python benchmarks/transfer_demo.py --lm runs/wikitext2_lstm_adaptive/model --seeds 1 2 3 --minutes 20 \\
        --out runs/transfer_demo --json leaderboard/results/benchmarks/transfer_lstm.json

Runs go in waves of `--parallel` (default 2), each an `accelerate launch recipes/ner.py` process with
`--threads` threads (default: the machine's cores split between them), seed by seed. Every run shares the
machine with the same number of others (keep the number of runs a multiple of `--parallel`), so all arms get
the same compute under the same wall-clock budget. Every arm uses the tagger config (`--config`, the
BiLSTM-CRF by default) with the LM's word-vector size (a Light RNN word is its row and column vectors: twice
its embedding size); the pretrained arm adds `model.init_from=<lm>` and any `--pretrained-set key=value`
options (freezing, a separate rate); `--add-source-words` adds a third arm that also brings the LM's words
missing from the training data into the tagger vocabulary. Printed: test and valid entity F1 per arm as mean
+- std over the seeds, each LM arm's difference from random, and the vocabulary coverage of the LM. Each run
writes its own result.json under `--out`; copy those into leaderboard/results/ner/conll2003/ to put the rows
on the leaderboard.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def word_vector_size(lm_dir: str) -> int:
    from nlprnn.hub import read_checkpoint_config

    config = read_checkpoint_config(lm_dir)
    size = config["config"]["embedding_size"]
    return 2 * size if config["model"] == "lightrnn" else size


def launch(config: str, run_dir: Path, threads: int, overrides: list[str]) -> subprocess.Popen:
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--num_cpu_threads_per_process", str(threads), "--mixed_precision", "no", "--dynamo_backend", "no",
           str(REPO / "recipes" / "ner.py"), "--config", config, f"run.dir={run_dir}", "run.progress=false",
           *overrides]
    with open(run_dir / "train.log", "w") as log:  # the child keeps its own copy of the handle
        return subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})


def summarise(records: list[dict]) -> dict:
    tests = [r["metrics"]["test_f1"] for r in records]
    valids = [r["metrics"]["valid_f1"] for r in records]
    spread = statistics.stdev if len(records) > 1 else (lambda _: 0.0)
    return {"seeds": [r["seed"] for r in records], "test_f1": tests, "valid_f1": valids,
            "test_f1_mean": statistics.mean(tests), "test_f1_std": spread(tests),
            "valid_f1_mean": statistics.mean(valids), "valid_f1_std": spread(valids),
            "minutes": statistics.mean(r["train"]["wall_seconds"] for r in records) / 60}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", required=True, help="pretrained language-model checkpoint (save_pretrained)")
    parser.add_argument("--config", default=str(REPO / "recipes" / "configs" / "ner" / "conll2003_bilstm_crf.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget of every run")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    parser.add_argument("--parallel", type=int, default=2, help="runs trained side by side")
    parser.add_argument("--out", default="runs/transfer_demo")
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides for every arm")
    parser.add_argument("--pretrained-set", nargs="*", default=[], help="key=value overrides for the LM arms")
    parser.add_argument("--add-source-words", action="store_true",
                        help="a third arm: LM-initialised with transfer.add_source_words=true")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args()

    out = Path(args.out).resolve()
    lm = str(Path(args.lm).resolve())
    common = [f"model.embedding_size={word_vector_size(lm)}", f"train.max_minutes={args.minutes:g}", *args.set]
    arms = {"random": [], "pretrained": [f"model.init_from={lm}", *args.pretrained_set]}
    if args.add_source_words:
        arms["pretrained_words"] = [*arms["pretrained"], "transfer.add_source_words=true"]
    # Seed-major order in waves of --parallel: every run trains beside the same number of others.
    jobs = [(seed, arm) for seed in args.seeds for arm in arms]
    records: dict[str, dict[int, dict]] = {arm: {} for arm in arms}
    for start in range(0, len(jobs), args.parallel):
        running = {(seed, arm): launch(args.config, out / f"{arm}-seed{seed}", args.threads,
                                       [*common, f"train.seed={seed}", *arms[arm]])
                   for seed, arm in jobs[start:start + args.parallel]}
        for (seed, arm), process in running.items():
            run_dir = out / f"{arm}-seed{seed}"
            if process.wait() != 0:
                raise SystemExit(f"{arm} seed {seed} failed (exit {process.returncode}); "
                                 f"see {run_dir / 'train.log'}")
            records[arm][seed] = json.loads((run_dir / "result.json").read_text())
            print(f"seed {seed} {arm}: test F1 {records[arm][seed]['metrics']['test_f1']:.2f}", flush=True)

    summary = {arm: summarise([by_seed[seed] for seed in args.seeds]) for arm, by_seed in records.items()}
    first = records["pretrained"][args.seeds[0]]
    coverage = first.get("transfer", {}).get("embedding_coverage")
    added = (records["pretrained_words"][args.seeds[0]].get("data", {}).get("source_words_added", 0)
             if "pretrained_words" in records else 0)
    gains = {arm: summary[arm]["test_f1_mean"] - summary["random"]["test_f1_mean"] for arm in arms if arm != "random"}
    for arm, s in summary.items():
        print(f"{arm:>16}: test F1 {s['test_f1_mean']:.2f} +- {s['test_f1_std']:.2f}   valid F1 "
              f"{s['valid_f1_mean']:.2f} +- {s['valid_f1_std']:.2f}   ({len(s['seeds'])} seeds, "
              f"{s['minutes']:.1f} min each)")
    for arm, gain in gains.items():
        print(f"{arm} vs random: test F1 {gain:+.2f} points (goal: >= +1)")
    if coverage:
        print(f"coverage: {coverage['exact']} words found exactly, {coverage['lowercase']} lower-cased, "
              f"{coverage['missing']} missing, of {coverage['total']} ({100 * coverage['coverage']:.1f}%)")
    if added:
        print(f"pretrained_words: {added} LM words missing from the training data joined the tagger vocabulary")
    if args.json:
        from nlprnn.io import atomic_write_json
        from nlprnn.metrics import hardware
        from nlprnn.results import command_line, git_commit, now_iso

        rows = [{"arm": arm, **{k: v for k, v in s.items() if not isinstance(v, list)}} for arm, s in summary.items()]
        atomic_write_json(args.json, {
            "benchmark": "transfer_demo", "lm": lm, "lm_model": first["transfer"]["source_model"],
            "budget_minutes": args.minutes, "threads_per_run": args.threads, "parallel_runs": args.parallel,
            "rows": rows, "runs": summary, "gain_test_f1": gains["pretrained"], "gains_test_f1": gains,
            "coverage": coverage, "source_words_added": added,
            "hardware": hardware(), "git_commit": git_commit(), "command": command_line(), "date": now_iso()})


if __name__ == "__main__":
    main()
