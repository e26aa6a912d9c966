"""Text corpora from either a local folder (`train.txt`, `valid.txt`, `test.txt`) or a hub dataset id.

Both kinds hand out splits as streams of (line number, line), so a corpus never has to fit in
memory and every error can point at the exact file and line. The local folder is the offline path;
hub ids (e.g. `wikitext` with name `wikitext-2-v1`) are for machines with network access.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nlprnn.errors import NlprnnError, located

SPLITS = ("train", "valid", "test")

# Hub datasets mostly call the held-out split "validation"; try that first, then the local name.
HUB_SPLIT_NAMES = {"valid": ("validation", "valid")}

# `name` or `owner/name`: no further slashes, no backslashes, nothing that starts like a path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

_EXPECTED_TEXT = "expected a non-empty UTF-8 text file with one line per paragraph/sentence"


def lm_tokens(line: str) -> list[str]:
    """WikiText convention (pytorch/examples word_language_model): whitespace tokens, then `<eos>`, blank lines too."""
    return line.split() + ["<eos>"]


class TextSplit:
    """One split of a corpus, read as a stream of (1-based line number, line without its newline)."""

    name: str
    location: str

    def iter_lines(self) -> Iterator[tuple[int, str]]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r})"


class FileSplit(TextSplit):
    """A split stored as a local UTF-8 text file."""

    def __init__(self, name: str, path: str | Path):
        self.name = name
        self.path = Path(path)
        self.location = str(self.path)

    def iter_lines(self) -> Iterator[tuple[int, str]]:
        # Binary mode splits on b"\n" only (text mode would also split on a lone \r), and lets us
        # report the byte offset of a bad byte, which text-mode decoding hides.
        offset = 0
        with open(self.path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as error:
                    bad = raw[error.start : error.start + 1].hex()
                    raise located(
                        self.path,
                        number,
                        f"byte 0x{bad} at byte offset {offset + error.start} of the file "
                        f"(byte {error.start + 1} of the line) is not valid UTF-8; {_EXPECTED_TEXT}",
                    ) from None
                offset += len(raw)
                if number == 1:
                    line = line.removeprefix("\ufeff")
                yield number, line.removesuffix("\n").removesuffix("\r")

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()


class HubSplit(TextSplit):
    """A split streamed from a hub dataset; each row's `text_column` is one line."""

    def __init__(self, name: str, dataset_id: str, config_name: str | None, text_column: str = "text"):
        self.name = name
        self.dataset_id = dataset_id
        self.config_name = config_name
        self.text_column = text_column
        self._dataset, self.hub_split = _open_hub_split(dataset_id, config_name, name)
        self.location = (
            f"hub:{dataset_id}" + (f"/{config_name}" if config_name else "") + f":{self.hub_split}"
        )

    def iter_lines(self) -> Iterator[tuple[int, str]]:
        rows = iter(self._dataset)
        number = 0
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as error:  # a network drop mid-stream surfaces here, not in load_dataset
                raise _hub_error(
                    self.dataset_id, self.config_name, f"reading split {self.hub_split!r} failed", error
                ) from None
            number += 1
            if self.text_column not in row:
                raise located(
                    self.location,
                    number,
                    f"row has no column {self.text_column!r}; columns are {sorted(row)}",
                )
            text = row[self.text_column]
            if not isinstance(text, str):
                raise located(
                    self.location,
                    number,
                    f"column {self.text_column!r} holds {type(text).__name__}, expected a string",
                )
            # Hub WikiText rows keep the file's "\n"; strip it so hub and local copies give the same tokens.
            yield number, text.removesuffix("\n").removesuffix("\r")

    def fingerprint(self) -> str:
        return hashlib.sha256(
            f"{self.dataset_id}/{self.config_name or ''}/{self.hub_split}".encode()
        ).hexdigest()


@dataclass
class TextCorpus:
    source: str
    splits: dict[str, TextSplit] = field(default_factory=dict)

    def __getitem__(self, split: str) -> TextSplit:
        if split not in self.splits:
            raise NlprnnError(f"{self.source}: has no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split]


def resolve_text_corpus(
    path: str | Path,
    name: str | None = None,
    splits: Sequence[str] = SPLITS,
    text_column: str = "text",
) -> TextCorpus:
    """A local folder with `<split>.txt` files if `path` is one, else the hub dataset `path` (config `name`)."""
    folder = Path(path)
    path = str(path)
    if folder.is_dir():
        return TextCorpus(source=str(folder), splits={split: _file_split(folder, split) for split in splits})
    if folder.exists() or not looks_like_hub_id(path):
        wanted = "/".join(f"{split}.txt" for split in splits)
        raise NlprnnError(f"'{path}' is neither a folder with {wanted} nor a hub dataset id")
    hub_splits = {split: HubSplit(split, path, name, text_column) for split in splits}
    return TextCorpus(source=f"hub:{path}" + (f"/{name}" if name else ""), splits=hub_splits)


def looks_like_hub_id(path: str) -> bool:
    return bool(_HUB_ID.match(path)) and ".txt" not in path


def _file_split(folder: Path, split: str) -> FileSplit:
    path = folder / f"{split}.txt"
    if not path.is_file():
        raise located(path, None, f"missing split file; {_EXPECTED_TEXT}")
    if path.stat().st_size == 0:
        raise located(path, None, f"split file is empty; {_EXPECTED_TEXT}")
    return FileSplit(split, path)


def _open_hub_split(dataset_id: str, config_name: str | None, split: str):
    """Open a streaming split (no download yet); returns (dataset, hub split name)."""
    import datasets  # imported here: it is slow to import and only the hub path needs it

    first_error = None
    for hub_split in HUB_SPLIT_NAMES.get(split, (split,)):
        try:
            return datasets.load_dataset(dataset_id, config_name, split=hub_split, streaming=True), hub_split
        except (
            Exception
        ) as error:  # offline, unknown id, unknown config, missing split: all the user's to fix
            first_error = first_error or error
    raise _hub_error(dataset_id, config_name, f"loading split {split!r} failed", first_error) from first_error


def _hub_error(dataset_id: str, config_name: str | None, what: str, error: BaseException) -> NlprnnError:
    config = f" (name {config_name!r})" if config_name else ""
    return NlprnnError(
        f"hub dataset '{dataset_id}'{config}: {what}: {type(error).__name__}: {error}. "
        f"It is not a local folder either: check the id and network access, or pass a folder "
        f"with train.txt/valid.txt/test.txt (the offline path)"
    )
