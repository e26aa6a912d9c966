"""encode_lm_split (cached int32 token files) and BPTTStreams (chunking and rank sharding)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nlprnn.data import batching
from nlprnn.data.batching import BPTTStreams, encode_lm_split, lm_cache_paths, lm_split_stats
from nlprnn.data.corpora import FileSplit, lm_tokens, resolve_text_corpus
from nlprnn.data.vocab import WordVocab
from nlprnn.errors import NlprnnError

WIKITEXT2 = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2"


@pytest.fixture
def split(tmp_path):
    path = tmp_path / "corpus" / "train.txt"
    path.parent.mkdir()
    path.write_text(" the cat sat \n \n the dog <unk> \n a zebra \n", encoding="utf-8")
    return FileSplit("train", path)


@pytest.fixture
def vocab():
    # Built by hand so the ids below are easy to check; "zebra" is left out on purpose, so it encodes as <unk>.
    return WordVocab(["<unk>", "<eos>", "the", "cat", "sat", "dog", "a"], counts=[1, 4, 2, 1, 1, 1, 1])


EXPECTED_IDS = [2, 3, 4, 1, 1, 2, 5, 0, 1, 6, 0, 1]


def test_encode_writes_int32_file_and_stats(split, vocab, tmp_path):
    cache = tmp_path / "cache"
    tokens = encode_lm_split(split, vocab, cache)
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.int32
    assert tokens.tolist() == EXPECTED_IDS
    tokens_path, stats_path = lm_cache_paths(split, vocab, cache)
    assert (
        tokens_path.parent == cache
        and tokens_path.name.startswith("train-")
        and tokens_path.suffix == ".tokens"
    )
    assert stats_path == tokens_path.with_suffix(".json")
    assert tokens_path.stat().st_size == 4 * len(EXPECTED_IDS)
    stats = json.loads(stats_path.read_text())
    assert stats == {"tokens": 12, "unk_tokens": 2, "lines": 4, "source": str(split.path)}
    assert lm_split_stats(split, vocab, cache) == stats
    assert sorted(p.name for p in cache.iterdir()) == sorted([tokens_path.name, stats_path.name])


def test_second_call_reads_cache_without_encoding(split, vocab, tmp_path, monkeypatch):
    encode_lm_split(split, vocab, tmp_path)

    def fail(self):
        raise AssertionError("re-encoded a cached split")

    monkeypatch.setattr(FileSplit, "iter_lines", fail)
    again = encode_lm_split(split, vocab, tmp_path)
    assert isinstance(again, np.memmap) and again.tolist() == EXPECTED_IDS


def test_cache_key_follows_text_and_vocab(split, vocab, tmp_path):
    first = lm_cache_paths(split, vocab, tmp_path)[0]
    other_vocab = WordVocab(vocab.itos + ["zebra"])
    assert lm_cache_paths(split, other_vocab, tmp_path)[0] != first
    assert encode_lm_split(split, other_vocab, tmp_path)[-2] == 7
    split.path.write_text(" the cat \n", encoding="utf-8")
    assert lm_cache_paths(split, vocab, tmp_path)[0] != first
    assert encode_lm_split(split, vocab, tmp_path).tolist() == [2, 3, 1]


def test_truncated_cache_is_rebuilt(split, vocab, tmp_path):
    encode_lm_split(split, vocab, tmp_path)
    tokens_path, _ = lm_cache_paths(split, vocab, tmp_path)
    tokens_path.write_bytes(tokens_path.read_bytes()[:8])
    assert encode_lm_split(split, vocab, tmp_path).tolist() == EXPECTED_IDS


def test_small_blocks_give_the_same_file(split, vocab, tmp_path, monkeypatch):
    monkeypatch.setattr(batching, "_BLOCK_TOKENS", 3)
    assert encode_lm_split(split, vocab, tmp_path).tolist() == EXPECTED_IDS


def test_failed_encode_leaves_no_files(split, vocab, tmp_path):
    split.path.write_bytes(b" the cat \n bad \xff byte \n")
    cache = tmp_path / "cache"
    with pytest.raises(NlprnnError, match=r"train\.txt:2: byte 0xff at byte offset 15"):
        encode_lm_split(split, vocab, cache)
    assert list(cache.iterdir()) == []


def test_closed_vocab_reports_the_line(split, tmp_path):
    closed = WordVocab(["<eos>", "the", "cat", "sat", "dog", "<unk>"], unk=None)
    with pytest.raises(
        NlprnnError, match=r"train\.txt:4: 'a' is not in the vocabulary .*'<unk>' among its specials"
    ):
        encode_lm_split(split, closed, tmp_path)


@pytest.mark.skipif(not WIKITEXT2.is_dir(), reason="needs ../shared/data/wikitext-2 beside the repo")
def test_wikitext2_valid_encodes_to_published_counts(tmp_path):
    valid = resolve_text_corpus(WIKITEXT2, splits=("valid",)).splits["valid"]
    vocab = WordVocab.build((lm_tokens(line) for _, line in valid.iter_lines()), specials=("<unk>", "<eos>"))
    tokens = encode_lm_split(valid, vocab, tmp_path)
    assert len(tokens) == 217_646
    assert lm_split_stats(valid, vocab, tmp_path) == {
        "tokens": 217_646,
        "unk_tokens": 11_718,
        "lines": 3_760,
        "source": str(WIKITEXT2 / "valid.txt"),
    }


def test_chunks_follow_batchify_layout():
    streams = BPTTStreams(np.arange(26, dtype=np.int32), batch_size=4, bptt=2)
    # 26 // 4 = 6 tokens per stream, the last 2 dropped; 5 predictions per stream in chunks of 2, 2, 1.
    assert (streams.stream_length, len(streams), streams.local_batch_size) == (6, 3, 4)
    inputs, targets = streams[0]
    assert inputs.dtype == targets.dtype == torch.long
    assert inputs.tolist() == [[0, 1], [6, 7], [12, 13], [18, 19]]
    assert targets.tolist() == [[1, 2], [7, 8], [13, 14], [19, 20]]
    inputs, targets = streams[2]
    assert inputs.tolist() == [[4], [10], [16], [22]]
    assert targets.tolist() == [[5], [11], [17], [23]]
    assert [tuple(x.shape) for x, _ in streams] == [(4, 2), (4, 2), (4, 1)]
    assert streams.predicted_tokens_global == streams.predicted_tokens_local == 20
    with pytest.raises(IndexError):
        streams[3]


def test_iter_from_resumes():
    streams = BPTTStreams(np.arange(26), batch_size=4, bptt=2)
    resumed = list(streams.iter_from(1))
    assert [i for i, _, _ in resumed] == [1, 2]
    assert torch.equal(resumed[0][1], streams[1][0]) and torch.equal(resumed[1][2], streams[2][1])
    assert list(streams.iter_from(3)) == []
    with pytest.raises(NlprnnError, match="cannot resume at chunk 4: this epoch has 3 chunks"):
        list(streams.iter_from(4))


@pytest.mark.parametrize("n_tokens, batch_size, bptt", [(26, 4, 2), (1000, 8, 35), (103, 6, 7), (64, 2, 100)])
def test_ranks_concatenate_to_the_single_process_batch(n_tokens, batch_size, bptt):
    tokens = np.random.default_rng(0).integers(0, 50, size=n_tokens).astype(np.int32)
    single = BPTTStreams(tokens, batch_size, bptt)
    ranks = [BPTTStreams(tokens, batch_size, bptt, rank=r, world_size=2) for r in range(2)]
    assert all(len(r) == len(single) for r in ranks)
    assert ranks[0].local_batch_size == batch_size // 2
    assert (
        sum(r.predicted_tokens_local for r in ranks)
        == single.predicted_tokens_global
        == ranks[1].predicted_tokens_global
    )
    for i in range(len(single)):
        inputs, targets = single[i]
        assert torch.equal(torch.cat([ranks[0][i][0], ranks[1][i][0]]), inputs)
        assert torch.equal(torch.cat([ranks[0][i][1], ranks[1][i][1]]), targets)
    assert sum(t.numel() for _, t in single) == single.predicted_tokens_global


def test_memmap_rows_are_views_not_copies(tmp_path):
    path = tmp_path / "tokens"
    np.arange(1000, dtype=np.int32).tofile(path)
    tokens = np.memmap(path, dtype=np.int32, mode="r")
    streams = BPTTStreams(tokens, batch_size=4, bptt=10, rank=1, world_size=2)
    assert np.shares_memory(streams._rows, tokens)  # the corpus stays on disk; only chunks are copied
    inputs, _ = streams[0]
    assert inputs[0, :3].tolist() == [500, 501, 502]
    inputs += 1  # chunks are private writable copies, safe to modify in place


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 6, "world_size": 4}, "batch_size 6 is not divisible by world_size 4"),
        ({"batch_size": 20}, "20 tokens are too few for batch_size 20"),
        ({"batch_size": 2, "rank": 2, "world_size": 2}, "rank 2 is outside world_size 2"),
        ({"batch_size": 2, "bptt": 0}, "must be positive"),
    ],
)
def test_bad_settings(kwargs, message):
    kwargs = {"bptt": 5, **kwargs}
    with pytest.raises(NlprnnError, match=message):
        BPTTStreams(np.arange(20), **kwargs)
