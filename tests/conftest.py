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


# A toy language pair: German-like phrases and their English translations, composed the same way.
_DE_EN = [
    ({"die Katze": "the cat", "ein Hund": "a dog", "der alte Mann": "the old man", "meine Schwester": "my sister"}),
    ({"sieht": "sees", "mag": "likes", "füttert": "feeds", "sucht": "looks for"}),
    ({"den Fisch": "the fish", "einen Ball": "a ball", "den Garten": "the garden", "unser Haus": "our house"}),
]


def write_parallel_corpus(folder: Path, seed: int = 0, lines: tuple[int, int, int] = (400, 30, 30),
                          test_split: str = "test2016") -> Path:
    """Multi30k's layout (<split>.de / <split>.en) with sentences of a toy phrase-by-phrase language pair."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", test_split), lines):
        de, en = [], []
        for _ in range(n):
            phrases = [rng.choice(sorted(table.items())) for table in _DE_EN]
            de.append(" ".join(p[0] for p in phrases).capitalize() + ".")
            en.append(" ".join(p[1] for p in phrases).capitalize() + ".")
        (folder / f"{split}.de").write_text("\n".join(de) + "\n", encoding="utf-8")
        (folder / f"{split}.en").write_text("\n".join(en) + "\n", encoding="utf-8")
    return folder


def tiny_mt_overrides(corpus: Path, run_dir: Path, **extra) -> list[str]:
    values = {
        "task": "mt", "data.path": str(corpus), "data.vocab_size": 60, "data.max_tokens": 256,
        "data.eval_batch_size": 16, "model.name": "gru_attn", "model.embedding_size": 16, "model.hidden_size": 16,
        "model.dropout": 0.0, "train.optimizer": "adam", "train.lr": 0.01, "train.clip_norm": 1.0,
        "train.schedule": "constant", "train.epochs": 2, "train.log_every": 5, "train.seed": 7,
        "decode.beam_size": 3, "run.dir": str(run_dir), "run.progress": False, "run.tracker": "none",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


_PEOPLE = [["John", "Smith"], ["Maria"], ["Li", "Wei"], ["Peter", "Blackburn"]]
_PLACES = [["Paris"], ["New", "York"], ["Bonn"], ["Lake", "Geneva"]]
_VERBS_NER = ["visited", "left", "praised", "reached"]


def write_conll_corpus(folder: Path, seed: int = 0, sentences: tuple[int, int, int] = (200, 30, 30)) -> Path:
    """CoNLL-2003's layout (word POS chunk NER, IOB1, -DOCSTART- lines) with toy sentences about people and places."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in zip(("train", "valid", "test"), sentences):
        lines = ["-DOCSTART- -X- -X- O", ""]
        for i in range(n):
            person, place = rng.choice(_PEOPLE), rng.choice(_PLACES)
            words = [(w, "I-PER") for w in person] + [(rng.choice(_VERBS_NER), "O")]
            words += [(w, "I-LOC") for w in place]
            if i % 5 == 0:  # two places side by side: IOB1 marks the second with B-
                words += [(w, "B-LOC" if j == 0 else "I-LOC") for j, w in enumerate(rng.choice(_PLACES))]
            words += [(str(rng.randint(1900, 2020)), "O"), (".", "O")]
            lines += [f"{w} NN I-NP {t}" for w, t in words] + [""]
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def tiny_ner_overrides(corpus: Path, run_dir: Path, **extra) -> list[str]:
    values = {
        "task": "ner", "data.path": str(corpus), "data.batch_size": 8, "model.embedding_size": 16,
        "model.char_embedding_size": 8, "model.char_hidden_size": 8, "model.hidden_size": 16, "model.dropout": 0.0,
        "train.optimizer": "adam", "train.lr": 0.01, "train.clip_norm": 5.0, "train.schedule": "constant",
        "train.epochs": 2, "train.log_every": 5, "train.seed": 7, "run.dir": str(run_dir), "run.progress": False,
        "run.tracker": "none",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


@pytest.fixture
def conll_corpus(tmp_path) -> Path:
    return write_conll_corpus(tmp_path / "conll_corpus")


@pytest.fixture
def mt_corpus(tmp_path) -> Path:
    return write_parallel_corpus(tmp_path / "mt_corpus")


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
