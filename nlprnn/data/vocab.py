"""Word-level vocabulary: token <-> id maps with counts, a stable build order and a JSON file format.

The id order is part of every checkpoint (embedding rows, softmax columns), so `build` is fully
deterministic and `fingerprint()` lets a checkpoint check that it is paired with the same vocabulary.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from nlprnn.errors import NlprnnError, located
from nlprnn.io import atomic_write_bytes

UNK = "<unk>"
EOS = "<eos>"
PAD = "<pad>"
BOS = "<s>"
EOS_SENT = "</s>"

FORMAT = "nlprnn.WordVocab"
VERSION = 1


class WordVocab:
    """An ordered list of tokens (`itos`) with its inverse (`stoi`) and per-token training counts."""

    def __init__(self, itos: Sequence[str], counts: Sequence[int] | None = None, unk: str | None = UNK):
        self._itos = list(itos)
        self._stoi = {token: i for i, token in enumerate(self._itos)}
        if len(self._stoi) != len(self._itos):
            duplicates = [token for token, n in Counter(self._itos).items() if n > 1]
            raise NlprnnError(f"vocabulary has duplicate tokens {duplicates[:5]!r}; expected each token once")
        if counts is None:
            counts = [0] * len(self._itos)
        if len(counts) != len(self._itos):
            raise NlprnnError(
                f"vocabulary has {len(self._itos)} tokens but {len(counts)} counts; expected one count per token"
            )
        self._counts = [int(c) for c in counts]
        if unk is not None and unk not in self._stoi:
            raise NlprnnError(
                f"unk token {unk!r} is not in the vocabulary; add it or pass unk=None for a closed vocabulary"
            )
        self._unk = unk
        self._unk_id = self._stoi[unk] if unk is not None else None

    @classmethod
    def build(
        cls,
        lines: Iterable[Iterable[str]],
        min_freq: int = 1,
        max_size: int | None = None,
        specials: Sequence[str] = (UNK, EOS, PAD),
    ) -> WordVocab:
        """Count tokens and order them: specials first, then by descending count, ties by first appearance.

        `max_size` includes the specials. Words seen fewer than `min_freq` times are left out, so they
        encode as `<unk>` (when `<unk>` is among the specials).
        """
        if len(set(specials)) != len(specials):
            raise NlprnnError(f"specials {tuple(specials)!r} contain a duplicate")
        if max_size is not None and max_size < len(specials):
            raise NlprnnError(
                f"max_size={max_size} is smaller than the {len(specials)} special tokens {tuple(specials)!r}"
            )
        counter: Counter[str] = Counter()
        for tokens in lines:
            counter.update(tokens)
        # Counter keeps first-insertion order and sorted() is stable, so ties stay in order of first appearance.
        words = [w for w in counter if w not in specials and counter[w] >= min_freq]
        words = sorted(words, key=lambda w: -counter[w])
        if max_size is not None:
            words = words[: max_size - len(specials)]
        itos = list(specials) + words
        counts = [counter.get(token, 0) for token in itos]
        return cls(itos, counts, unk=UNK if UNK in specials else None)

    def __len__(self) -> int:
        return len(self._itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __getitem__(self, token: str) -> int:
        index = self._stoi.get(token, self._unk_id)
        if index is None:
            raise KeyError(
                f"{token!r} is not in the vocabulary ({len(self)} tokens) and the vocabulary has no unk token"
            )
        return index

    def __repr__(self) -> str:
        return f"WordVocab(size={len(self)}, unk={self._unk!r})"

    def encode(self, tokens: Iterable[str]) -> list[int]:
        if self._unk_id is None:
            return [self[token] for token in tokens]
        get, unk_id = self._stoi.get, self._unk_id
        return [get(token, unk_id) for token in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self._itos)]
        if bad:
            raise IndexError(f"ids {bad[:5]} are outside the vocabulary of {len(self._itos)} tokens")
        return [self._itos[i] for i in ids]

    @property
    def itos(self) -> list[str]:
        return list(self._itos)

    @property
    def stoi(self) -> dict[str, int]:
        return dict(self._stoi)

    @property
    def counts(self) -> list[int]:
        return list(self._counts)

    @property
    def unk(self) -> str | None:
        return self._unk

    @property
    def unk_id(self) -> int | None:
        return self._unk_id

    @property
    def eos_id(self) -> int | None:
        return self._stoi.get(EOS)

    @property
    def pad_id(self) -> int | None:
        return self._stoi.get(PAD)

    def fingerprint(self) -> str:
        """sha256 of the token order: equal fingerprints mean ids mean the same words."""
        payload = json.dumps(self._itos, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def save(self, path: str | Path) -> None:
        document = {
            "format": FORMAT,
            "version": VERSION,
            "itos": self._itos,
            "counts": self._counts,
            "unk": self._unk,
        }
        text = json.dumps(document, ensure_ascii=False, indent=0)
        atomic_write_bytes(path, text.encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> WordVocab:
        path = Path(path)
        expected = f"expected a JSON vocabulary written by WordVocab.save ({{'format': '{FORMAT}', ...}})"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise located(path, None, f"vocabulary file not found; {expected}") from None
        except (OSError, UnicodeDecodeError) as error:
            raise located(path, None, f"cannot read vocabulary ({error}); {expected}") from None
        try:
            document = json.loads(text)
        except json.JSONDecodeError as error:
            raise located(path, error.lineno, f"invalid JSON ({error.msg}); {expected}") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise located(path, None, f"not a WordVocab file; {expected}")
        if document.get("version") != VERSION:
            raise located(
                path, None, f"unsupported WordVocab version {document.get('version')!r}; expected {VERSION}"
            )
        itos, counts, unk = document.get("itos"), document.get("counts"), document.get("unk")
        if not isinstance(itos, list) or not all(isinstance(t, str) for t in itos):
            raise located(path, None, "'itos' must be a list of strings")
        if not isinstance(counts, list) or not all(isinstance(c, int) for c in counts):
            raise located(path, None, "'counts' must be a list of integers")
        if unk is not None and not isinstance(unk, str):
            raise located(path, None, "'unk' must be a string or null")
        try:
            return cls(itos, counts, unk=unk)
        except NlprnnError as error:
            raise located(path, None, str(error)) from None
