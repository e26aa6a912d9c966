"""`nlprnn leaderboard --reproduce`: re-run a record's command and set the new metrics beside the recorded ones.

The command is the one the record stores, with a fresh run folder and, optionally, a shorter budget or the
recorded number of optimizer steps (the same training on any machine). With `--json` the comparison is
written as a reproduction record, which the leaderboard shows with the benchmark records.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from nlprnn.errors import NlprnnError
from nlprnn.io import atomic_write_json
from nlprnn.leaderboard import MAIN_METRIC
from nlprnn.results import REPO, command_line, now_iso, read_record, repo_relative, split_path_argument


def reproduce_command(record: dict, run_dir: str, budget_minutes: float | None = None,
                      same_steps: bool = False) -> list[str]:
    """The record's command with overrides: a fresh run.dir, and optionally a shorter budget or the same steps.

    A wall-clock budget buys fewer steps on a slower machine; `same_steps` replaces it with the number of
    optimizer steps the recorded run took, so the rerun does the same training whatever the hardware (on
    the same CPU type it is the same computation, up to float reordering across kernels).
    """
    if budget_minutes and same_steps:
        raise NlprnnError("--budget-minutes and --same-steps exclude each other")
    command = [_into_this_checkout(arg) for arg in shlex.split(record["command"])]
    if command[0] == "python":
        command[0] = sys.executable
    overrides = [f"run.dir={run_dir}", "run.resume=false"]
    if budget_minutes:
        overrides.append(f"train.max_minutes={budget_minutes}")
    if same_steps:
        train = record["config"].get("train", {})
        if train.get("schedule") == "cosine" and not train.get("max_steps"):
            raise NlprnnError("--same-steps: the recorded run's cosine schedule spans its epochs (train.max_steps "
                              "was 0), so setting max_steps would change the schedule; use its time budget")
        overrides += [f"train.max_steps={record['train']['steps']}", "train.max_minutes=0"]
    return command + overrides  # later key=value pairs win over the recorded ones


def _into_this_checkout(arg: str) -> str:
    """An absolute path into another clone of the repository (records written before paths were stored
    relative to the root carry e.g. /tmp/runclone/recipes/ner.py) becomes the same file in this checkout.
    Paths outside any clone (a pretrained model, a data folder) are left alone: they must exist as recorded."""
    prefix, value = split_path_argument(arg)
    if not value.startswith("/") or Path(value).exists():
        return arg
    parts = Path(value).parts
    for start in range(1, len(parts) - 1):
        if parts[start] in ("recipes", "benchmarks", "leaderboard") and REPO.joinpath(*parts[start:]).exists():
            return f"{prefix}{Path(*parts[start:])}"
    return arg


def reproduce(record_path: str, budget_minutes: float | None, run_dir: str | None, same_steps: bool = False,
              json_path: str | None = None, rerun: str | None = None) -> dict:
    """Re-run a record's command and return both metric sets; with `json_path`, also write a reproduction
    record there (a benchmark record the leaderboard shows next to the rows).

    `rerun`: the folder of a re-run already made with this command (a long one, started in the background),
    compared instead of running again; its own record must show it ran the recorded command.
    """
    record = read_record(record_path)
    if rerun:
        new = read_record(Path(rerun) / "result.json", require_commit=False)
        extra = new["command"][len(record["command"]):].split() if new["command"].startswith(record["command"]) \
            else None
        if extra is None or not any(arg.startswith("run.dir=") for arg in extra):
            raise NlprnnError(f"{rerun}: its command is not a re-run of {record_path}: expected "
                              f"'{record['command']} run.dir=...', got '{new['command']}'")
        # How it was re-run, from its resolved config rather than from the command's words.
        was, now = record["config"].get("train", {}), new["config"].get("train", {})
        same_steps = now.get("max_steps") == record["train"]["steps"] and not now.get("max_minutes")
        budget_minutes = None if same_steps or now.get("max_minutes") == was.get("max_minutes") \
            else now.get("max_minutes")
    else:
        new_dir = run_dir or str(Path("runs") / "reproduce" / Path(record_path).stem)
        subprocess.run(reproduce_command(record, new_dir, budget_minutes, same_steps), check=True)
        new = read_record(Path(new_dir) / "result.json", require_commit=False)
    if json_path:
        mode = "same steps" if same_steps else f"{budget_minutes:g}-minute budget" if budget_minutes else "as recorded"
        atomic_write_json(json_path, reproduction_record(record_path, record, new, mode, command=from_scratch_command(
            record_path, budget_minutes, same_steps, json_path)))
    return {"old": record["metrics"], "new": new["metrics"]}


def from_scratch_command(record_path: str, budget_minutes: float | None, same_steps: bool, json_path: str) -> str:
    """The command that makes this reproduction record by running again, also when it compared a re-run made
    earlier (`--rerun`): that folder exists only on the machine that ran it."""
    how = ["--same-steps"] if same_steps else ["--budget-minutes", f"{budget_minutes:g}"] if budget_minutes else []
    return shlex.join(["nlprnn", "leaderboard", "--reproduce", repo_relative(str(Path(record_path).resolve())),
                       *how, "--json", repo_relative(str(Path(json_path).resolve()))])


def reproduction_record(record_path: str, record: dict, new: dict, mode: str, command: str | None = None) -> dict:
    """Old and new main metrics side by side, with where and how long each run trained."""
    test_key, valid_key, _, _ = MAIN_METRIC.get(record["task"], ("test", "valid", True, ""))
    rows = [{"metric": key, "recorded": record["metrics"][key], "reproduced": new["metrics"][key],
             "difference": new["metrics"][key] - record["metrics"][key]} for key in (valid_key, test_key)]

    def run(r: dict) -> dict:
        return {"git_commit": r["git_commit"], "hardware": r["hardware"], "seed": r["seed"],
                "steps": r["train"]["steps"], "wall_seconds": r["train"]["wall_seconds"]}

    return {"benchmark": "reproduction", "record": repo_relative(str(Path(record_path).resolve())), "mode": mode,
            "rows": rows, "recorded": run(record), "reproduced": run(new), "hardware": new["hardware"],
            "git_commit": new["git_commit"], "command": command or command_line(), "date": now_iso()}
