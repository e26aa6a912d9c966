"""Parallel corpora and token-budget batches: alignment errors named, skips counted, batches exact and sharded."""

import numpy as np
import pytest
from conftest import write_parallel_corpus

from nlprnn.data.parallel import read_pairs, resolve_parallel_corpus
from nlprnn.data.seq_batching import length_batches, pad, training_batches
from nlprnn.errors import NlprnnError

SPLITS = {"train": "train", "valid": "valid", "test": "test2016"}


def test_reads_aligned_pairs_from_a_multi30k_folder(tmp_path):
    corpus = resolve_parallel_corpus(write_parallel_corpus(tmp_path / "c"), "de", "en", SPLITS)
    pairs, skipped = read_pairs(corpus["train"], skip_empty=True)
    assert len(pairs) == 400 and skipped == 0
    assert pairs[0][0].endswith(".") and pairs[0][1].endswith(".")
    assert corpus["test"].source.location.endswith("test2016.de")


def test_files_of_different_lengths_name_the_longer_file_and_line(tmp_path):
    folder = write_parallel_corpus(tmp_path / "c")
    (folder / "valid.en").write_text("one\ntwo\nthree\n", encoding="utf-8")
    corpus = resolve_parallel_corpus(folder, "de", "en", SPLITS)
    with pytest.raises(NlprnnError, match=r"valid.de:4: has more lines than .*valid.en \(3 lines\)"):
        read_pairs(corpus["valid"], skip_empty=False)


def test_empty_lines_are_skipped_in_training_and_errors_elsewhere(tmp_path):
    folder = write_parallel_corpus(tmp_path / "c", lines=(5, 3, 3))
    lines = (folder / "train.en").read_text(encoding="utf-8").splitlines()
    lines[2] = "   "
    (folder / "train.en").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "valid.de").write_text("a\n\nc\n", encoding="utf-8")
    corpus = resolve_parallel_corpus(folder, "de", "en", SPLITS)
    pairs, skipped = read_pairs(corpus["train"], skip_empty=True)
    assert (len(pairs), skipped) == (4, 1)
    with pytest.raises(NlprnnError, match=r"valid.de:2: empty line in split 'valid'"):
        read_pairs(corpus["valid"], skip_empty=False)


def test_undecodable_bytes_and_missing_files(tmp_path):
    folder = write_parallel_corpus(tmp_path / "c", lines=(5, 3, 3))
    (folder / "test2016.en").write_bytes(b"fine\nbad \xff byte\nok\n")
    corpus = resolve_parallel_corpus(folder, "de", "en", SPLITS)
    with pytest.raises(NlprnnError, match=r"test2016.en:2: byte 0xff .* not valid UTF-8"):
        read_pairs(corpus["test"], skip_empty=False)
    with pytest.raises(NlprnnError, match=r"train.fr: missing.*The folder has: .*train.de"):
        resolve_parallel_corpus(folder, "de", "fr", SPLITS)
    with pytest.raises(NlprnnError, match="both 'de'"):
        resolve_parallel_corpus(folder, "de", "de", SPLITS)
    with pytest.raises(NlprnnError, match="neither a folder"):
        resolve_parallel_corpus(tmp_path / "nowhere" / "x.txt", "de", "en", SPLITS)


def test_length_batches_respect_the_token_budget():
    lengths = np.random.default_rng(0).integers(1, 30, size=500)
    batches = length_batches(lengths, 100)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for batch in batches:
        assert len(batch) * lengths[batch].max() <= 100
    with pytest.raises(NlprnnError, match="smaller than the longest example"):
        length_batches([5, 120], 100)


def test_training_batches_are_a_function_of_seed_and_epoch_and_shard_evenly():
    lengths = np.random.default_rng(1).integers(1, 40, size=700)
    first = training_batches(lengths, 200, seed=3, epoch=0)
    again = training_batches(lengths, 200, seed=3, epoch=0)
    other = training_batches(lengths, 200, seed=3, epoch=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and len(first) == len(again)
    assert not all(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(first, other))
    assert sorted(np.concatenate(first).tolist()) == list(range(700))
    shards = [training_batches(lengths, 200, seed=3, epoch=0, rank=r, world=2) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == len(first) // 2
    assert all(np.array_equal(a, b) for a, b in zip(shards[0] + shards[1], first[0::2][: len(shards[0])]
                                                   + first[1::2][: len(shards[1])]))


def test_pad():
    ids, lengths = pad([[5, 6, 7], [8]], 0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]
