"""WordVocab: build order, lookups, fingerprint and the JSON file format with its error paths."""

import json

import pytest

from nlprnn.data.vocab import EOS, PAD, UNK, WordVocab
from nlprnn.errors import NlprnnError

LINES = [
    ["the", "cat", "sat", "<eos>"],
    ["the", "dog", "<unk>", "sat", "<eos>"],
    ["a", "cat", "<eos>"],
]


def build(**kwargs):
    return WordVocab.build(LINES, **kwargs)


def test_build_orders_specials_then_count_then_first_appearance():
    vocab = build()
    # the/cat/sat tie at 2 and keep first-appearance order; dog/a tie at 1 likewise.
    assert vocab.itos == ["<unk>", "<eos>", "<pad>", "the", "cat", "sat", "dog", "a"]
    # Specials that occur in the text keep their place and record their count (<pad> never occurs).
    assert vocab.counts == [1, 3, 0, 2, 2, 2, 1, 1]
    assert (vocab.unk_id, vocab.eos_id, vocab.pad_id) == (0, 1, 2)
    assert len(vocab) == 8


def test_build_is_deterministic_and_fingerprint_tracks_order():
    assert build().fingerprint() == build().fingerprint()
    assert len(build().fingerprint()) == 64
    reordered = WordVocab.build(LINES, specials=(EOS, UNK, PAD))
    assert reordered.itos[:2] == ["<eos>", "<unk>"]
    assert reordered.fingerprint() != build().fingerprint()


def test_min_freq_drops_rare_words_to_unk():
    vocab = build(min_freq=2)
    assert vocab.itos == ["<unk>", "<eos>", "<pad>", "the", "cat", "sat"]
    assert vocab.encode(["the", "dog", "a", "sat"]) == [3, 0, 0, 5]


def test_max_size_counts_specials():
    vocab = build(max_size=5)
    assert vocab.itos == ["<unk>", "<eos>", "<pad>", "the", "cat"]
    with pytest.raises(NlprnnError, match="smaller than the 3 special tokens"):
        build(max_size=2)


def test_lookup_encode_decode():
    vocab = build()
    assert vocab["cat"] == 4
    assert vocab["zebra"] == vocab.unk_id == 0
    assert "cat" in vocab and "zebra" not in vocab
    assert vocab.encode(["a", "cat", "zebra", "<eos>"]) == [7, 4, 0, 1]
    assert vocab.decode([7, 4, 0, 1]) == ["a", "cat", "<unk>", "<eos>"]
    assert vocab.stoi["dog"] == 6
    with pytest.raises(IndexError, match="outside the vocabulary of 8"):
        vocab.decode([8])


def test_vocab_without_unk_raises_key_error():
    vocab = WordVocab.build(LINES, specials=(EOS,))
    assert vocab.unk_id is None and vocab.pad_id is None and vocab.eos_id == 0
    assert vocab.itos[:3] == ["<eos>", "the", "cat"]
    # "<unk>" occurs in the text, so here it is an ordinary word.
    assert "<unk>" in vocab
    with pytest.raises(KeyError, match="'zebra' is not in the vocabulary .* no unk token"):
        vocab["zebra"]
    with pytest.raises(KeyError):
        vocab.encode(["the", "zebra"])


def test_constructor_checks():
    assert WordVocab(["<unk>", "a"]).counts == [0, 0]
    with pytest.raises(NlprnnError, match="duplicate tokens \\['a'\\]"):
        WordVocab(["<unk>", "a", "a"])
    with pytest.raises(NlprnnError, match="2 tokens but 1 counts"):
        WordVocab(["<unk>", "a"], counts=[1])
    with pytest.raises(NlprnnError, match="unk token '<unk>' is not in the vocabulary"):
        WordVocab(["a", "b"])


def test_save_load_roundtrip(tmp_path):
    vocab = build()
    path = tmp_path / "sub" / "vocab.json"
    vocab.save(path)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["format"] == "nlprnn.WordVocab" and document["version"] == 1
    assert (
        document["itos"] == vocab.itos and document["counts"] == vocab.counts and document["unk"] == "<unk>"
    )
    loaded = WordVocab.load(path)
    assert loaded.itos == vocab.itos and loaded.counts == vocab.counts
    assert loaded.fingerprint() == vocab.fingerprint()
    assert [p.name for p in path.parent.iterdir()] == ["vocab.json"]  # no temp file left behind


def test_save_load_non_ascii_and_no_unk(tmp_path):
    vocab = WordVocab(["<eos>", "café", "日本"], counts=[3, 2, 1], unk=None)
    vocab.save(tmp_path / "v.json")
    loaded = WordVocab.load(tmp_path / "v.json")
    assert loaded.itos == ["<eos>", "café", "日本"] and loaded.unk_id is None


def write(tmp_path, text):
    path = tmp_path / "vocab.json"
    path.write_text(text, encoding="utf-8")
    return path


def good_document(**changes):
    document = {
        "format": "nlprnn.WordVocab",
        "version": 1,
        "itos": ["<unk>", "a"],
        "counts": [0, 1],
        "unk": "<unk>",
    }
    document.update(changes)
    return json.dumps(document)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"format": "nlprnn.WordVocab",\n "itos": [', r"vocab.json:2: invalid JSON"),
        (json.dumps({"format": "other"}), "not a WordVocab file"),
        (json.dumps(["<unk>", "a"]), "not a WordVocab file"),
        (good_document(version=7), "unsupported WordVocab version 7"),
        (good_document(itos=["<unk>", "a", "a"], counts=[0, 1, 1]), r"duplicate tokens \['a'\]"),
        (good_document(counts=[0]), "2 tokens but 1 counts"),
        (good_document(itos="abc"), "'itos' must be a list of strings"),
        (good_document(counts=["1", "2"]), "'counts' must be a list of integers"),
        (good_document(unk="<missing>"), "unk token '<missing>' is not in the vocabulary"),
    ],
)
def test_load_rejects_bad_files_naming_the_file(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(NlprnnError, match=message) as info:
        WordVocab.load(path)
    assert str(info.value).startswith(str(path))


def test_load_missing_file(tmp_path):
    with pytest.raises(NlprnnError, match=r"nope\.json: vocabulary file not found"):
        WordVocab.load(tmp_path / "nope.json")
