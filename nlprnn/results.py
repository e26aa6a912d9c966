"""Run records: the JSON file every run writes, from which the leaderboard is generated.

A record is what a reader needs to trust and reproduce a number: the metrics, the exact command and
resolved config, the code version (git commit), the hardware and the seed. Records are validated when
written and when read, so a hand-made or truncated file is rejected with its name.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from nlprnn.errors import NlprnnError
from nlprnn.io import atomic_write_json

SCHEMA_VERSION = 1

# key -> type the value must have; nested required keys are listed separately.
REQUIRED = {
    "task": str,
    "dataset": str,
    "model": str,
    "params": dict,
    "metrics": dict,
    "train": dict,
    "peak_memory_bytes": int,
    "hardware": dict,
    "seed": int,
    "git_commit": str,
    "command": str,
    "config": dict,
}
REQUIRED_NESTED = {
    "params": ("total", "embedding_softmax"),
    "train": ("tokens_per_second", "wall_seconds", "steps", "epochs"),
}
REQUIRED_METRICS = {"lm": ("valid_ppl", "test_ppl"), "mt": ("valid_bleu", "test_bleu", "test_chrf", "bleu_signature"),
                    "ner": ("valid_f1", "test_f1", "per_type")}


def git_commit(cwd: str | Path | None = None) -> str:
    """The commit of the code that ran, with `-dirty` when tracked files had uncommitted changes."""
    where = Path(cwd) if cwd else Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


REPO = Path(__file__).resolve().parents[1]


def split_path_argument(arg: str) -> tuple[str, str]:
    """"model.init_from=/a/b" -> ("model.init_from=", "/a/b"); a bare path has no prefix."""
    key, sep, value = arg.rpartition("=") if "=" in arg and not arg.startswith("/") else ("", "", arg)
    return key + sep, value


def repo_relative(arg: str, repo: Path = REPO) -> str:
    """A path inside the checkout (alone or as key=value) relative to its root: the command then runs in any
    clone, as `nlprnn leaderboard --reproduce` does from the repository root. Other paths stay as they are."""
    prefix, value = split_path_argument(arg)
    if not value.startswith("/"):
        return arg
    try:
        relative = Path(value).resolve().relative_to(repo)
    except ValueError:
        return arg
    return f"{prefix}{relative}"


def command_line() -> str:
    """The command as the user would type it again, including `accelerate launch` when it was used."""
    argv = [sys.argv[0] if sys.argv[0].endswith(".py") else Path(sys.argv[0]).name, *sys.argv[1:]]
    argv = [repo_relative(arg) for arg in argv]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if "ACCELERATE_MIXED_PRECISION" in os.environ or world > 1 and "LOCAL_RANK" in os.environ:
        launch = ["accelerate", "launch"]
        if world > 1:
            launch += ["--multi_gpu", "--num_processes", str(world)]
        precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if precision != "no":
            launch += ["--mixed_precision", precision]
        if os.environ.get("OMP_NUM_THREADS") and not _cuda_available():
            # The launcher sets OMP_NUM_THREADS (1 unless told): CPU speed depends on it.
            launch += ["--num_cpu_threads_per_process", os.environ["OMP_NUM_THREADS"]]
        return shlex.join(launch + argv)
    return shlex.join(["python", *argv] if argv[0].endswith(".py") else argv)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def validate_record(record: dict, source: str = "<record>", require_commit: bool = True) -> dict:
    """Raise an error naming `source` and every missing or mistyped key; return the record.

    The leaderboard requires a known commit; a user's run outside a git checkout may still write its record.
    """
    if not isinstance(record, dict):
        raise NlprnnError(f"{source}: a run record must be a JSON object")
    problems = []
    for key, kind in REQUIRED.items():
        if key not in record:
            problems.append(f"missing '{key}'")
        elif not isinstance(record[key], kind) or (kind is int and isinstance(record[key], bool)):
            problems.append(f"'{key}' should be {kind.__name__}, got {type(record[key]).__name__}")
    for key, nested in REQUIRED_NESTED.items():
        if isinstance(record.get(key), dict):
            problems += [f"missing '{key}.{n}'" for n in nested if n not in record[key]]
    for name in REQUIRED_METRICS.get(record.get("task"), ()):
        if isinstance(record.get("metrics"), dict) and name not in record["metrics"]:
            problems.append(f"missing 'metrics.{name}'")
    if require_commit and record.get("git_commit") in ("", "unknown"):
        problems.append("'git_commit' is unknown: records must come from a run of committed code")
    if problems:
        raise NlprnnError(f"{source}: not a valid run record: " + "; ".join(problems))
    return record


def write_record(path: str | Path, record: dict) -> Path:
    record = {"schema_version": SCHEMA_VERSION, "date": now_iso(), **record}
    validate_record(record, str(path), require_commit=False)
    atomic_write_json(path, record)
    return Path(path)


def read_record(path: str | Path, require_commit: bool = True) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NlprnnError(f"{path}: run record not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NlprnnError(f"{path}: not a JSON run record ({e})") from None
    return validate_record(record, str(path), require_commit)
