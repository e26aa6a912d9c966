"""Parallel corpora: aligned (source, target) sentence pairs from a folder or a hub dataset.

A local folder holds `<split>.<lang>` files, one sentence per line, line i of one language the translation
of line i of the other (Multi30k: `train.de` / `train.en`, `valid.*`, `test2016.*`). A hub dataset (e.g.
`bentrevett/multi30k`) has one column per language. Either way a split is read as a stream of
(line number, source, target), and the two sides must end together: a file with more lines than its partner
is an error naming both files and the line where one ran out, never a silent misalignment.

`read_pairs` reads a whole split into memory (parallel corpora for RNN translation are small: Multi30k is
4 MB); in the training split empty pairs are skipped and counted for the run record.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from nlprnn.data.corpora import FileSplit, HubSplit, TextSplit, looks_like_hub_id
from nlprnn.errors import NlprnnError, located

_EXPECTED = "expected UTF-8 text, one sentence per line, aligned line by line with its translation"


@dataclass
class ParallelSplit:
    name: str
    source: TextSplit
    target: TextSplit

    @property
    def location(self) -> str:
        return f"{self.source.location} + {self.target.location}"

    def iter_pairs(self) -> Iterator[tuple[int, str, str]]:
        """(1-based line number, source line, target line), checking that both sides have the same length."""
        sources, targets = self.source.iter_lines(), self.target.iter_lines()
        number = 0
        while True:
            src, tgt = next(sources, None), next(targets, None)
            if src is None and tgt is None:
                return
            number += 1
            if src is None or tgt is None:
                longer, shorter = (self.target, self.source) if src is None else (self.source, self.target)
                raise located(longer.location, number,
                              f"has more lines than {shorter.location} ({number - 1} lines); {_EXPECTED}")
            yield number, src[1], tgt[1]

    def fingerprint(self) -> str:
        return f"{self.source.fingerprint()}:{self.target.fingerprint()}"


@dataclass
class ParallelCorpus:
    source: str
    src_lang: str
    tgt_lang: str
    splits: dict[str, ParallelSplit] = field(default_factory=dict)

    def __getitem__(self, split: str) -> ParallelSplit:
        if split not in self.splits:
            raise NlprnnError(f"{self.source}: has no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]


def resolve_parallel_corpus(path: str | Path, src: str, tgt: str, splits: dict[str, str],
                            name: str | None = None) -> ParallelCorpus:
    """`splits` maps our split names to the stored ones, e.g. {"train": "train", "test": "test2016"}."""
    if src == tgt:
        raise NlprnnError(f"data.src and data.tgt are both {src!r}; expected two different languages")
    folder = Path(path)
    if folder.is_dir():
        return ParallelCorpus(str(folder), src, tgt, {
            ours: ParallelSplit(ours, _language_file(folder, stored, src), _language_file(folder, stored, tgt))
            for ours, stored in splits.items()
        })
    if folder.exists() or not looks_like_hub_id(str(path)):
        wanted = ", ".join(f"{stored}.{src}/{stored}.{tgt}" for stored in splits.values())
        raise NlprnnError(f"'{path}' is neither a folder with {wanted} nor a hub dataset id")
    return ParallelCorpus(f"hub:{path}" + (f"/{name}" if name else ""), src, tgt, {
        ours: ParallelSplit(ours, HubSplit(stored, str(path), name, src), HubSplit(stored, str(path), name, tgt))
        for ours, stored in splits.items()
    })


def _language_file(folder: Path, split: str, lang: str) -> FileSplit:
    path = folder / f"{split}.{lang}"
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix)
        raise located(path, None, f"missing; {_EXPECTED}. The folder has: {', '.join(present) or 'no files'}")
    if path.stat().st_size == 0:
        raise located(path, None, f"is empty; {_EXPECTED}")
    return FileSplit(split, path)


def read_pairs(split: ParallelSplit, skip_empty: bool) -> tuple[list[tuple[str, str]], int]:
    """All pairs of `split`, whitespace-trimmed, and how many were skipped for an empty side.

    The training split skips (and counts) empty pairs; a held-out split must keep every reference, so there an
    empty side is an error naming the file and line.
    """
    pairs, skipped = [], 0
    for number, src, tgt in split.iter_pairs():
        src, tgt = src.strip(), tgt.strip()
        if not src or not tgt:
            if not skip_empty:
                side = split.source if not src else split.target
                raise located(side.location, number, f"empty line in split {split.name!r}; {_EXPECTED}")
            skipped += 1
            continue
        pairs.append((src, tgt))
    if not pairs:
        raise NlprnnError(f"{split.location}: no sentence pairs in split {split.name!r} ({skipped} empty)")
    return pairs, skipped
