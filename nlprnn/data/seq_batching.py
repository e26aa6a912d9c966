"""Token-budget batches for sentence-level tasks (translation, tagging), bucketed by length, sharded by process.

Training batches are a pure function of (lengths, max_tokens, seed, epoch): examples are sorted by length with
a random tie-break drawn for the epoch, cut greedily into batches whose padded size (examples x longest
example) stays within `max_tokens`, and the batch order is shuffled. The same call on every process gives the
same list; each process takes every `world`-th batch, the list cut to a multiple of `world` so that all
processes take the same number of steps. Resuming at batch i of an epoch is then just skipping i batches.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from nlprnn.errors import NlprnnError


def length_batches(lengths: Sequence[int], max_tokens: int, order: np.ndarray | None = None) -> list[np.ndarray]:
    """Cut `order` (default: by length) into consecutive batches of padded size <= max_tokens."""
    lengths = np.asarray(lengths, dtype=np.int64)
    if order is None:
        order = np.argsort(lengths, kind="stable")
    longest = int(lengths.max()) if len(lengths) else 0
    if longest > max_tokens:
        raise NlprnnError(f"data.max_tokens={max_tokens} is smaller than the longest example ({longest} tokens); "
                          f"raise it or lower data.max_length")
    batches, start, widest = [], 0, 0
    for position, index in enumerate(order):
        widest_here = max(widest, int(lengths[index]))
        if widest_here * (position - start + 1) > max_tokens:
            batches.append(order[start:position])
            start, widest_here = position, int(lengths[index])
        widest = widest_here
    if start < len(order):
        batches.append(order[start:])
    return batches


def training_batches(lengths: Sequence[int], max_tokens: int, seed: int, epoch: int, rank: int = 0,
                     world: int = 1) -> list[np.ndarray]:
    """This process's batches of an epoch: bucketed by length, shuffled per (seed, epoch), sharded by rank."""
    rng = np.random.default_rng([seed, epoch])
    lengths = np.asarray(lengths, dtype=np.int64)
    # Sort by length, ties in a random order of the epoch: batches differ from epoch to epoch but stay tight.
    order = np.lexsort((rng.permutation(len(lengths)), lengths))
    batches = length_batches(lengths, max_tokens, order)
    batches = [batches[i] for i in rng.permutation(len(batches))]
    usable = len(batches) - len(batches) % world
    if usable == 0:
        raise NlprnnError(f"{len(batches)} batch(es) cannot be shared by {world} processes; lower data.max_tokens")
    return batches[rank:usable:world]


def pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (B, L) padded with pad_id, lengths (B,)) of a batch of id lists."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, : len(sequence)] = torch.as_tensor(sequence, dtype=torch.long)
    return ids, lengths
