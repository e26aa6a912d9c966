"""The leaderboard: `leaderboard/README.md` and its plots, regenerated from the run records and nothing else.

    nlprnn leaderboard                       validate every record, rewrite README.md and the plots
    nlprnn leaderboard --check               exit 1 when the committed README or plots are stale
    nlprnn leaderboard --reproduce RECORD [--budget-minutes N | --same-steps] [--json PATH] [--rerun RUN_DIR]
                                             re-run a record's command (or take a re-run already made),
                                             compare metrics (and record them)

Run records live in `leaderboard/results/<task>/<dataset>/*.json` (written by the recipes), benchmark records
in `leaderboard/results/benchmarks/*.json` (written by the benchmark scripts with --json). Records of the
same model and configuration that differ only in seed, run on the same compute (CPU model or GPU, threads,
processes, precision), are one row, shown as mean +- std over the seeds.
Published numbers come from `leaderboard/references.yaml` and are shown in a separate table, never mixed
with measured rows.

Benchmark records get a table each (the figures the benchmark printed) and feed the Light RNN plots. Each
plot is a PNG whose text chunk holds the hash of the data it was drawn from (see `nlprnn.plots`); `--check`
recomputes the README and those hashes, so it does not depend on how matplotlib renders on a given machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from nlprnn.config import flatten
from nlprnn.errors import NlprnnError
from nlprnn.plots import data_hash, draw, png_data_hash
from nlprnn.results import REPO, read_record

ROOT = REPO / "leaderboard"
MAIN_METRIC = {"lm": ("test_ppl", "valid_ppl", False, "perplexity"), "mt": ("test_bleu", "valid_bleu", True, "BLEU"),
               "ner": ("test_f1", "valid_f1", True, "entity F1")}
TASK_TITLES = {"lm": "Language modelling", "mt": "Translation", "ner": "Named-entity recognition"}
BENCHMARK_KEYS = ("benchmark", "hardware", "git_commit", "command", "date")


def load_records(root: Path) -> tuple[list[dict], list[dict]]:
    """(run records, benchmark records), each validated; an invalid file is an error naming it."""
    runs, benchmarks = [], []
    for path in sorted((root / "results").rglob("*.json")):
        relative = path.relative_to(root).as_posix()
        if "benchmarks" in path.relative_to(root / "results").parts[:1]:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise NlprnnError(f"{path}: not JSON ({e})") from None
            missing = [k for k in BENCHMARK_KEYS if k not in record]
            if missing:
                raise NlprnnError(f"{path}: not a benchmark record: missing {', '.join(missing)}")
            benchmarks.append({**record, "_file": relative})
        else:
            runs.append({**read_record(path), "_file": relative})
    return runs, benchmarks


def _full_config(record: dict) -> dict:
    """The record's config with the settings added to the code since it ran filled in with their defaults.

    A new setting keeps the old behaviour as its default, so a record written before it existed ran with
    that default: without filling it in, one more seed of an old row would never join it. A record whose
    config this code no longer reads keeps its config as written.
    """
    from nlprnn.config import load_config

    try:
        return load_config(None, [], **json.loads(json.dumps(record["config"]))).to_dict()
    except NlprnnError:
        return json.loads(json.dumps(record["config"]))


def _identity(record: dict, config: dict) -> str:
    """Records equal but for seed and output folder, run with the same compute, are seeds of one row."""
    config = json.loads(json.dumps(config))
    config.get("train", {}).pop("seed", None)
    config.get("run", {}).pop("dir", None)
    return json.dumps([record["task"], record["dataset"], record["model"], config, _compute(record)], sort_keys=True)


def _compute(record: dict) -> dict:
    """What a wall-clock budget buys, besides the config: device (GPU or CPU model), threads, processes, precision.

    The CPU model counts: sessions land on different machines, and the same 60 minutes bought 52,848 steps of
    the adaptive LSTM on one 2-core Xeon and 33,168 on a 2-core EPYC, so runs on both are not seeds of
    one configuration.
    """
    h = record["hardware"]
    return {"device": _device_name(h), "threads": h.get("torch_threads"),
            "processes": h.get("num_processes", 1), "precision": h.get("mixed_precision", "no")}


def _on_gpu(hardware: dict) -> bool:
    # A record names the GPU whenever CUDA was visible; it ran there only when its device says so.
    return bool(hardware.get("gpu")) and hardware.get("device", "cuda") == "cuda"


def _device_name(hardware: dict) -> str:
    return hardware["gpu"] if _on_gpu(hardware) else hardware.get("cpu") or "cpu"


def tracks(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """A table's rows split into the CPU track and the GPU track, in that order, leaving out an empty track.

    They are never one table: the same wall-clock budget buys far more steps on a GPU (the MT GRU-attention
    model trained 15x faster on an H200 than on 2 CPU cores), so GPU rows would top every CPU table and front.
    """
    split = {"CPU": [], "GPU": []}
    for row in rows:
        split["GPU" if _on_gpu(row["records"][0]["hardware"]) else "CPU"].append(row)
    return [(track, track_rows) for track, track_rows in split.items() if track_rows]


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def rows_by_table(runs: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups: dict[str, list[dict]] = {}
    for record in runs:
        record["_config"] = _full_config(record)
        groups.setdefault(_identity(record, record["_config"]), []).append(record)
    tables: dict[tuple[str, str], list[dict]] = {}
    for records in groups.values():
        first = records[0]
        test_key, valid_key, higher, _ = MAIN_METRIC.get(first["task"], ("test", "valid", True, ""))
        tests = [r["metrics"][test_key] for r in records]
        budget = first["config"].get("train", {}).get("max_minutes")
        label = first["model"] + (f" ({budget:g} min)" if budget else "")
        tables.setdefault((first["task"], first["dataset"]), []).append({
            "records": records, "model": label, "test": tests,
            "valid": [r["metrics"][valid_key] for r in records], "higher": higher,
            "params": first["params"], "minutes": statistics.mean(r["train"]["wall_seconds"] for r in records) / 60,
            "speed": statistics.mean(r["train"]["tokens_per_second"] for r in records),
            "memory": max(r["peak_memory_bytes"] for r in records),
        })
    for rows in tables.values():
        _name_apart(rows)
        rows.sort(key=lambda row: statistics.mean(row["test"]), reverse=rows[0]["higher"])
    return tables


LABEL_ORDER = {"model": 0, "transfer": 1, "data": 2, "train": 3}


def _name_apart(rows: list[dict], most: int = 3) -> None:
    """Rows that would share a label (e.g. full and adaptive softmax LSTMs) get the settings they differ in.

    Settings an older record lacks read as their defaults (`_full_config`). Rows that still look alike
    are told apart by commit.
    """
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["model"], []).append(row)
    for same in by_label.values():
        if len(same) < 2:
            continue
        configs = [flatten(row["records"][0]["_config"]) | _compute(row["records"][0]) for row in same]
        # The model and what it starts from first, then data and training settings, then compute: a row is
        # told apart by what was chosen before where it ran, and a pretrained row always says so.
        keys = sorted(set.intersection(*(set(c) for c in configs)) - {"train.seed", "run.dir"},
                      key=lambda k: (LABEL_ORDER.get(k.split(".")[0], len(LABEL_ORDER)) if "." in k else 99, k))
        differing = [k for k in keys if len({json.dumps(c[k], sort_keys=True) for c in configs}) > 1]
        shown = most  # the first few differences, more only while two rows would still look alike
        while True:
            labels = [", ".join(f"{k.split('.')[-1]}={_short(c[k])}" for k in differing[:shown]) for c in configs]
            if len(set(labels)) == len(labels) or shown >= len(differing):
                break
            shown += 1
        for row, label in zip(same, labels):
            if not label or labels.count(label) > 1:
                label = ", ".join(filter(None, [label, "commit " + row["records"][0]["git_commit"][:8]]))
            row["model"] += f" [{label}]"


def _short(value) -> str:
    if isinstance(value, str):
        # A path (a pretrained source, a vectors file) is told apart by its last parts, not the machine's prefix.
        return "/".join(value.rstrip("/").split("/")[-2:])
    return json.dumps(value, separators=(",", ":"))


def _hardware(record: dict) -> str:
    h = record["hardware"]
    device = h["gpu"] if _on_gpu(h) else f"{h.get('cpu', 'cpu')} x{h.get('torch_threads', '?')} threads"
    return f"{device}, {h.get('num_processes', 1)} proc"


def _run_table(task: str, title: str, rows: list[dict]) -> list[str]:
    _, _, higher, metric = MAIN_METRIC.get(task, ("", "", True, "metric"))
    arrow = "higher is better" if higher else "lower is better"
    lines = [f"## {TASK_TITLES.get(task, task)}: {title}", "", f"Test {metric} ({arrow}).", "",
             "| model | params (total / emb+softmax) | valid | test | seeds | train min | tokens/s | peak MiB "
             "| hardware | date | commit | record |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        first = row["records"][0]
        lines.append(
            f"| {row['model']} | {row['params']['total']:,} / {row['params']['embedding_softmax']:,} | "
            f"{_mean_std(row['valid'])} | {_mean_std(row['test'])} | {len(row['records'])} | {row['minutes']:.0f} "
            f"| {row['speed']:,.0f} | {row['memory'] / 2**20:,.0f} | {_hardware(first)} | {first['date'][:10]} "
            f"| `{first['git_commit'][:8]}` | [{Path(first['_file']).name}]({first['_file']}) |")
    lines += ["", "<details><summary>commands</summary>", ""]
    for row in rows:
        for record in row["records"]:
            lines.append(f"- `{record['command']}` (seed {record['seed']})")
    return lines + ["", "</details>", ""]


def render_readme(runs: list[dict], benchmarks: list[dict], references: list[dict], plots: dict[str, str]) -> str:
    lines = ["# nlprnn leaderboard", "",
             "Generated by `nlprnn leaderboard` from the run records in `results/` — do not edit by hand. Every row",
             "can be re-run with its command (`nlprnn leaderboard --reproduce <record>`). Seeds of one configuration",
             "on the same compute are one row (mean ± std). Budgets are wall-clock: a row run on another CPU model",
             "(see hardware) had the same minutes but not the same number of steps. Runs on a GPU are the GPU",
             "track, a table of their own after the CPU track's.", ""]
    for (task, dataset), rows in sorted(rows_by_table(runs).items()):
        for track, track_rows in tracks(rows):
            lines += _run_table(task, dataset + (", GPU track" if track == "GPU" else ""), track_rows)
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{title}]({name})" for name, title in sorted(plots.items())]
        lines.append("")
    if benchmarks:
        lines += ["## Benchmark records", ""]
        for b in sorted(benchmarks, key=lambda b: (b["benchmark"], b["date"])):
            lines += [f"### {b['benchmark']}: {Path(b['_file']).name}", "",
                      f"{b['date'][:10]}, commit `{b['git_commit'][:8]}`, {_hardware(b)}: `{b['command']}`", ""]
            lines += BENCHMARK_TABLES.get(b["benchmark"], _rows_table)(b)
    if references:
        lines += ["## Published reference numbers (not measured here)", "",
                  "| task | dataset | model | metric | value | source |", "| --- | --- | --- | --- | --- | --- |"]
        for r in references:
            lines.append(f"| {r['task']} | {r['dataset']} | {r['model']} | {r['metric']} | {r['value']} | {r['source']} |")
        lines.append("")
    return "\n".join(lines)


def _table(header: list[str], rows: list[list]) -> list[str]:
    def cell(value) -> str:
        if isinstance(value, float):
            return f"{value:,.4g}" if abs(value) < 10 else f"{value:,.1f}"
        return f"{value:,}" if isinstance(value, int) else str(value)

    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header),
            *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows), ""]


def _lightrnn_speed_tables(b: dict) -> list[str]:
    params = _table(["V", "E = H", "full softmax", "full, tied", "Light RNN", "full / Light RNN"],
                    [[p["vocab"], p["size"], p["lstm"]["embedding_softmax"], p["lstm_tied"]["embedding_softmax"],
                      p["lightrnn"]["embedding_softmax"], p["lstm_embedding_softmax_ratio"]] for p in b["params"]])
    speed = _table(["V", "Light RNN tokens/s", "full softmax", "adaptive", "vs full", "vs adaptive",
                    "peak RSS full / Light RNN"],
                   [[r["vocab"], *(r["runs"][m]["tokens_per_second"] for m in ("lightrnn", "lstm", "adaptive")),
                     r["speedup_vs_lstm"], r["speedup_vs_adaptive"], r["memory_ratio_lstm_vs_lightrnn"]]
                    for r in b["speed"]])
    return ["Embedding + softmax parameters:", "", *params, "Training speed:", "", *speed,
            *([b["target_text"], ""] if b.get("target_text") else [])]


def _reallocation_table(b: dict) -> list[str]:
    return _table(["V", "solver", "seconds", "peak RSS MiB", "data MiB", "cost after / before", "words moved",
                   "cost / exact"],
                  [[r["vocab"], r["solver"], r["seconds"], round(r["peak_rss_bytes"] / 2**20),
                    round(r["data_rss_bytes"] / 2**20), r["cost_after"] / r["cost_before"], r["words_moved"],
                    f"{r['cost_vs_reference']:.4f} ({r['reference']})"] for r in b["runs"]]) + \
        [f"failed: {f}" for f in b.get("failures", [])]


def _reproduction_table(b: dict) -> list[str]:
    def run(r: dict) -> str:
        return (f"commit `{r['git_commit'][:8]}`, {_hardware(r)}, seed {r['seed']}, {r['steps']:,} steps in "
                f"{r['wall_seconds'] / 60:.0f} min")

    parts = Path(b["record"]).parts
    link = (f"[{parts[-1]}]({Path(*parts[1:]).as_posix()})" if parts[0] == "leaderboard" else f"`{b['record']}`")
    return [f"Re-run of {link} ({b['mode']}). Recorded: {run(b['recorded'])}. Reproduced: {run(b['reproduced'])}.", "",
            *_table(["metric", "recorded", "reproduced", "difference"],
                    [[r["metric"], f"{r['recorded']:.2f}", f"{r['reproduced']:.2f}", f"{r['difference']:+.2f}"]
                     for r in b["rows"]])]


def _rows_table(b: dict) -> list[str]:
    """Any other benchmark: its `rows`, one column per scalar field."""
    rows = b.get("rows") or []
    if not rows:
        return []
    header = [k for k, v in rows[0].items() if isinstance(v, (int, float, str))]
    return _table(header, [[row.get(k, "") for k in header] for row in rows])


BENCHMARK_TABLES = {"lightrnn_speed": _lightrnn_speed_tables, "lightrnn_reallocation": _reallocation_table,
                    "reproduction": _reproduction_table}


def read_references(root: Path) -> list[dict]:
    import yaml

    path = root / "references.yaml"
    if not path.exists():
        return []
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    for i, entry in enumerate(entries):
        missing = [k for k in ("task", "dataset", "model", "metric", "value", "source") if k not in entry]
        if missing:
            raise NlprnnError(f"{path}: entry {i + 1} lacks {', '.join(missing)}")
    return entries


# ------------------------------------------------------------------------------------------------
# Plots


def plot_data(runs: list[dict], benchmarks: list[dict]) -> dict[str, tuple[str, dict]]:
    """file name -> (title, the data the plot is drawn from): quality vs time per task, throughput, Light RNN."""
    plots: dict[str, tuple[str, dict]] = {}
    for (task, dataset), all_rows in sorted(rows_by_table(runs).items()):
        _, _, higher, metric = MAIN_METRIC.get(task, ("", "", True, "metric"))
        for track, rows in tracks(all_rows):
            if len(rows) < 2:
                continue  # one point is no comparison: the table says it all
            points = [{"model": r["model"], "minutes": r["minutes"], "test": statistics.mean(r["test"]),
                       "speed": r["speed"]} for r in rows]
            slug = f"{task}_{dataset}".replace(" ", "_").replace("/", "_") + ("_gpu" if track == "GPU" else "")
            title = f"{TASK_TITLES.get(task, task)} {dataset}" + (" (GPU track)" if track == "GPU" else "")
            plots[f"quality_vs_time_{slug}.png"] = (f"{title}: test {metric} vs training minutes",
                                                    {"points": points, "higher": higher, "metric": metric})
            plots[f"throughput_{slug}.png"] = (f"{title}: training tokens/s", {"points": points})
    speed = [b for b in benchmarks if b["benchmark"] == "lightrnn_speed"]
    if speed:
        latest = max(speed, key=lambda b: b["date"])
        speed_points = [{"model": model, "vocab": row["vocab"], "tokens_per_second": run["tokens_per_second"]}
                        for row in latest.get("speed", []) for model, run in sorted(row.get("runs", {}).items())]
        params = [{"vocab": r["vocab"], "size": r["size"], "lstm": r["lstm"]["embedding_softmax"],
                   "lightrnn": r["lightrnn"]["embedding_softmax"]} for r in latest.get("params", [])]
        plots["lightrnn_vs_softmax.png"] = ("Light RNN vs full and adaptive softmax: parameters and speed vs V",
                                            {"params": params, "speed": speed_points})
    latest_run: dict[tuple, dict] = {}  # (V, solver) -> its most recent measurement over all records
    for b in sorted((b for b in benchmarks if b["benchmark"] == "lightrnn_reallocation"), key=lambda b: b["date"]):
        for r in b.get("runs", []):
            latest_run[(r["vocab"], r["solver"])] = {k: r[k] for k in ("vocab", "solver", "seconds", "cost_vs_reference")}
    if latest_run:
        plots["lightrnn_reallocation.png"] = ("Light RNN word re-allocation: solver time and cost vs V (synthetic costs)",
                                              {"runs": [latest_run[k] for k in sorted(latest_run)]})
    return plots


# ------------------------------------------------------------------------------------------------
# Commands


def generate(root: Path = ROOT, check: bool = False) -> list[str]:
    """Rewrite (or, with check, compare) README.md and the plots; returns what is stale."""
    runs, benchmarks = load_records(root)
    plots = plot_data(runs, benchmarks)
    readme = render_readme(runs, benchmarks, read_references(root), {n: t for n, (t, _) in plots.items()})
    stale = []
    readme_path = root / "README.md"
    if not readme_path.exists() or readme_path.read_text(encoding="utf-8") != readme:
        stale.append(str(readme_path))
    for name, (_title, data) in plots.items():
        if png_data_hash(root / name) != data_hash(data):
            stale.append(str(root / name))
    if not check:
        from nlprnn.io import atomic_write_text

        atomic_write_text(readme_path, readme)
        for name, (title, data) in plots.items():
            if str(root / name) in stale:
                draw(name, title, data, root / name)
    return stale


def main(argv: list[str] | None = None) -> int:
    from nlprnn.cli import run_main

    parser = argparse.ArgumentParser(prog="nlprnn leaderboard", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT), help="the leaderboard folder")
    parser.add_argument("--check", action="store_true", help="exit 1 when README.md or a plot is stale")
    parser.add_argument("--reproduce", metavar="RECORD", help="re-run this record's command")
    parser.add_argument("--budget-minutes", type=float, default=None, help="with --reproduce: a shorter budget")
    parser.add_argument("--same-steps", action="store_true",
                        help="with --reproduce: train for the recorded number of steps instead of its time budget")
    parser.add_argument("--run-dir", default=None, help="with --reproduce: where the new run goes")
    parser.add_argument("--rerun", default=None, metavar="RUN_DIR",
                        help="with --reproduce: compare with this re-run (made with the record's command) instead "
                             "of running it again")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="with --reproduce: write a reproduction record here (e.g. leaderboard/results/benchmarks/"
                             "reproduce_<name>.json) for the leaderboard")
    args = parser.parse_args(argv)
    status = [0]

    def run() -> None:
        if args.reproduce:
            from nlprnn.reproduce import reproduce

            result = reproduce(args.reproduce, args.budget_minutes, args.run_dir, args.same_steps, args.json,
                               args.rerun)
            for key in sorted(set(result["old"]) | set(result["new"])):
                old, new = result["old"].get(key), result["new"].get(key)
                if isinstance(old, float) and isinstance(new, float):
                    print(f"{key:>20}: recorded {old:10.3f}   reproduced {new:10.3f}   difference {new - old:+.3f}")
            return
        stale = generate(Path(args.root), check=args.check)
        if args.check and stale:
            print("stale (run `nlprnn leaderboard`):\n  " + "\n  ".join(stale))
            status[0] = 1
        elif not args.check:
            print(f"leaderboard regenerated in {args.root}" + (f" ({len(stale)} file(s) changed)" if stale else ""))

    code = run_main(run)
    return code or status[0]


if __name__ == "__main__":
    sys.exit(main())
