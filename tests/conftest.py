"""Shared pytest setup.

Test machines reach package registries but not dataset hubs, so the hub libraries are put in
offline mode before anything imports them: a hub lookup fails fast instead of hanging on the network.
"""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# Tiny models on a 2-core machine run fastest single-threaded: two busy threads per test process
# mostly wait on each other (and on whatever else the machine runs).
import torch  # noqa: E402

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------
# A tiny corpus with structure an LM can learn in seconds, and a tiny config to train on it.
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

_SUBJECTS = ["the cat", "a dog", "the old man", "my sister", "the bird"]
_VERBS = ["sees", "likes", "follows", "feeds", "watches"]
_OBJECTS = ["the fish", "a ball", "the garden", "the red car", "our house"]


def write_lm_corpus(folder: Path, seed: int = 0, lines: tuple[int, int, int] = (300, 40, 40)) -> Path:
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), lines):
        text = [f" {rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} . " for _ in range(n)]
        (folder / f"{split}.txt").write_text("\n".join(text) + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def lm_corpus(tmp_path) -> Path:
    return write_lm_corpus(tmp_path / "corpus")


def tiny_lm_overrides(corpus: Path, run_dir: Path, **extra) -> list[str]:
    values = {
        "data.path": str(corpus), "data.batch_size": 4, "data.eval_batch_size": 2, "data.bptt": 8,
        "data.cache_dir": str(run_dir.parent / "cache"),
        "model.embedding_size": 16, "model.hidden_size": 16, "model.num_layers": 1, "model.dropout": 0.0,
        "train.lr": 5.0, "train.epochs": 2, "train.log_every": 5, "train.seed": 7,
        "run.dir": str(run_dir), "run.progress": False, "run.tracker": "none",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; reset them so each in-process run starts clean."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    PartialState._reset_state()
