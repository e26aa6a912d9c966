"""Language-model batching: encode a split once into an int32 token file, then cut it into BPTT chunks.

The token file is memory-mapped, so a corpus larger than RAM costs only the chunks actually read.
`BPTTStreams` follows pytorch/examples `batchify`/`get_batch`, batch-first, and shards the global
batch by rows so that N processes together see exactly what one process would.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from nlprnn.data.corpora import TextSplit, lm_tokens
from nlprnn.data.vocab import WordVocab
from nlprnn.errors import NlprnnError, located
from nlprnn.io import atomic_write_json

# Bump when the token file layout or lm_tokens changes, so old caches are ignored rather than misread.
TOKEN_FORMAT_VERSION = 1
TOKEN_DTYPE = np.int32
_BLOCK_TOKENS = 1 << 20  # ids buffered in Python before each write: ~a few MB, whatever the corpus size


def lm_cache_paths(split: TextSplit, vocab: WordVocab, cache_dir: str | Path) -> tuple[Path, Path]:
    """(token file, stats json) for this split encoded with this vocabulary."""
    key_source = f"{split.fingerprint()}|{vocab.fingerprint()}|{TOKEN_FORMAT_VERSION}"
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]
    stem = f"{split.name}-{key}"
    return Path(cache_dir) / f"{stem}.tokens", Path(cache_dir) / f"{stem}.json"


def encode_lm_split(split: TextSplit, vocab: WordVocab, cache_dir: str | Path) -> np.ndarray:
    """Token ids of the whole split (lm_tokens per line), as a read-only memmap cached in `cache_dir`."""
    tokens_path, stats_path = lm_cache_paths(split, vocab, cache_dir)
    stats = _read_valid_stats(tokens_path, stats_path)
    if stats is None:
        stats = _encode_to_file(split, vocab, tokens_path)
        atomic_write_json(stats_path, stats)
    if stats["tokens"] == 0:
        return np.zeros(0, dtype=TOKEN_DTYPE)  # np.memmap cannot map an empty file
    return np.memmap(tokens_path, dtype=TOKEN_DTYPE, mode="r")


def lm_split_stats(split: TextSplit, vocab: WordVocab, cache_dir: str | Path) -> dict:
    """{"tokens", "unk_tokens", "lines", "source"} for the split, encoding it first if needed."""
    encode_lm_split(split, vocab, cache_dir)
    return json.loads(lm_cache_paths(split, vocab, cache_dir)[1].read_text(encoding="utf-8"))


def _read_valid_stats(tokens_path: Path, stats_path: Path) -> dict | None:
    # The json is written after the token file, so its presence marks a finished encode; the size
    # check also catches a token file replaced or truncated behind our back.
    try:
        stats = json.loads(stats_path.read_text(encoding="utf-8"))
        if tokens_path.stat().st_size == stats["tokens"] * np.dtype(TOKEN_DTYPE).itemsize:
            return stats
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _encode_to_file(split: TextSplit, vocab: WordVocab, tokens_path: Path) -> dict:
    if len(vocab) > np.iinfo(TOKEN_DTYPE).max:
        raise NlprnnError(
            f"vocabulary of {len(vocab)} tokens does not fit the {np.dtype(TOKEN_DTYPE).name} token file"
        )
    tokens_path.parent.mkdir(parents=True, exist_ok=True)
    n_tokens = n_unk = n_lines = 0
    block: list[int] = []

    def flush(f) -> None:
        nonlocal n_tokens, n_unk
        ids = np.asarray(block, dtype=TOKEN_DTYPE)
        ids.tofile(f)
        n_tokens += len(ids)
        if vocab.unk_id is not None:
            n_unk += int(np.count_nonzero(ids == vocab.unk_id))
        block.clear()

    # Encode into a temp file beside the target and rename it at the end: a killed run leaves no
    # half-written cache, and concurrent ranks encoding the same split just replace equal files.
    fd, tmp = tempfile.mkstemp(dir=tokens_path.parent, prefix=f".{tokens_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            for number, line in split.iter_lines():
                try:
                    block.extend(vocab.encode(lm_tokens(line)))
                except KeyError as error:
                    raise located(
                        split.location,
                        number,
                        f"{error.args[0]}; build the vocabulary with '<unk>' among its specials",
                    ) from None
                n_lines = number
                if len(block) >= _BLOCK_TOKENS:
                    flush(f)
            flush(f)
        os.replace(tmp, tokens_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"tokens": n_tokens, "unk_tokens": n_unk, "lines": n_lines, "source": split.location}


class BPTTStreams:
    """A token stream cut into `batch_size` parallel rows, read in (inputs, targets) chunks of `bptt` steps.

    Row r holds tokens [r*L, (r+1)*L) with L = len(tokens) // batch_size (the tail is dropped), so
    hidden state carried from chunk i to chunk i+1 continues the same text. With `world_size` > 1,
    process `rank` owns rows [rank*b, (rank+1)*b), b = batch_size // world_size: `batch_size` is global.
    """

    def __init__(self, tokens: np.ndarray, batch_size: int, bptt: int, rank: int = 0, world_size: int = 1):
        if tokens.ndim != 1:
            raise NlprnnError(f"expected a 1-D token array, got shape {tuple(tokens.shape)}")
        if batch_size < 1 or bptt < 1:
            raise NlprnnError(
                f"batch_size and bptt must be positive, got batch_size={batch_size}, bptt={bptt}"
            )
        if world_size < 1 or not 0 <= rank < world_size:
            raise NlprnnError(f"rank {rank} is outside world_size {world_size}")
        if batch_size % world_size != 0:
            raise NlprnnError(
                f"batch_size {batch_size} is not divisible by world_size {world_size}; "
                f"the global batch is split into equal row blocks, one per process"
            )
        stream_length = len(tokens) // batch_size
        if stream_length < 2:
            raise NlprnnError(
                f"{len(tokens)} tokens are too few for batch_size {batch_size}: "
                f"each of the {batch_size} streams needs at least 2 tokens (an input and its target)"
            )
        self.batch_size = batch_size
        self.bptt = bptt
        self.rank = rank
        self.world_size = world_size
        self.stream_length = stream_length
        self._local_batch_size = batch_size // world_size
        # Reshape and row slicing are views, so a memmap stays on disk until a chunk is read.
        rows = tokens[: batch_size * stream_length].reshape(batch_size, stream_length)
        self._rows = rows[rank * self._local_batch_size : (rank + 1) * self._local_batch_size]

    @property
    def local_batch_size(self) -> int:
        return self._local_batch_size

    @property
    def predicted_tokens_global(self) -> int:
        """Targets per epoch over all processes: the denominator of the epoch's mean loss."""
        return self.batch_size * (self.stream_length - 1)

    @property
    def predicted_tokens_local(self) -> int:
        return self._local_batch_size * (self.stream_length - 1)

    def __len__(self) -> int:
        return math.ceil((self.stream_length - 1) / self.bptt)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"chunk {index} is out of range for {len(self)} chunks")
        start = index * self.bptt
        steps = min(self.bptt, self.stream_length - 1 - start)
        # np.array copies just this chunk out of the (possibly read-only) memmap, already as int64.
        inputs = np.array(self._rows[:, start : start + steps], dtype=np.int64)
        targets = np.array(self._rows[:, start + 1 : start + 1 + steps], dtype=np.int64)
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, inputs, targets in self.iter_from(0):
            yield inputs, targets

    def iter_from(self, start: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """Yield (chunk index, inputs, targets) from chunk `start` on; `start == len(self)` yields nothing."""
        if not 0 <= start <= len(self):
            raise NlprnnError(
                f"cannot resume at chunk {start}: this epoch has {len(self)} chunks "
                f"(batch_size={self.batch_size}, bptt={self.bptt}); was the checkpoint made with other settings?"
            )
        for index in range(start, len(self)):
            yield (index, *self[index])

    def __repr__(self) -> str:
        return (
            f"BPTTStreams(batch_size={self.batch_size}, bptt={self.bptt}, rank={self.rank}/{self.world_size}, "
            f"stream_length={self.stream_length}, chunks={len(self)})"
        )
