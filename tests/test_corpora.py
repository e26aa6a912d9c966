"""resolve_text_corpus: local folders, hub ids (monkeypatched, plus one real offline failure) and WikiText-2 counts."""

import hashlib
from pathlib import Path

import datasets
import pytest

from nlprnn.data.corpora import SPLITS, FileSplit, lm_tokens, looks_like_hub_id, resolve_text_corpus
from nlprnn.data.vocab import WordVocab
from nlprnn.errors import NlprnnError

WIKITEXT2 = Path(__file__).resolve().parents[2] / "shared/data/wikitext-2"


def make_folder(tmp_path, **texts):
    contents = {"train": " = Title = \n \n the cat sat \n", "valid": " a dog \n", "test": " the end \n"}
    contents.update(texts)
    for split, text in contents.items():
        if text is not None:
            (tmp_path / f"{split}.txt").write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return tmp_path


def test_lm_tokens_wikitext_convention():
    assert lm_tokens(" = Title = ") == ["=", "Title", "=", "<eos>"]
    assert lm_tokens(" ") == ["<eos>"]
    assert lm_tokens("") == ["<eos>"]


def test_local_folder(tmp_path):
    corpus = resolve_text_corpus(make_folder(tmp_path))
    assert corpus.source == str(tmp_path)
    assert list(corpus.splits) == list(SPLITS)
    train = corpus.splits["train"]
    assert isinstance(train, FileSplit) and train.name == "train"
    assert train.location == str(tmp_path / "train.txt")
    assert list(train.iter_lines()) == [(1, " = Title = "), (2, " "), (3, " the cat sat ")]
    assert train.fingerprint() == hashlib.sha256((tmp_path / "train.txt").read_bytes()).hexdigest()
    assert corpus["valid"].fingerprint() != train.fingerprint()


def test_local_line_endings_bom_and_missing_final_newline(tmp_path):
    make_folder(tmp_path, train=b"\xef\xbb\xbfcaf\xc3\xa9\r\nsecond\n\nlast")
    lines = list(resolve_text_corpus(tmp_path).splits["train"].iter_lines())
    assert lines == [(1, "café"), (2, "second"), (3, ""), (4, "last")]


def test_subset_of_splits(tmp_path):
    make_folder(tmp_path, valid=None, test=None)
    corpus = resolve_text_corpus(tmp_path, splits=("train",))
    assert list(corpus.splits) == ["train"]
    with pytest.raises(NlprnnError, match="has no split 'test'"):
        corpus["test"]


def test_missing_split_file(tmp_path):
    make_folder(tmp_path, test=None)
    with pytest.raises(NlprnnError) as info:
        resolve_text_corpus(tmp_path)
    assert str(info.value) == (
        f"{tmp_path / 'test.txt'}: missing split file; "
        "expected a non-empty UTF-8 text file with one line per paragraph/sentence"
    )


def test_empty_split_file(tmp_path):
    make_folder(tmp_path, valid="")
    with pytest.raises(
        NlprnnError, match=r"valid\.txt: split file is empty; expected a non-empty UTF-8 text file"
    ):
        resolve_text_corpus(tmp_path)


def test_undecodable_byte_names_file_line_and_offset(tmp_path):
    make_folder(tmp_path, train=b"ok\nfine\nab\xffcd\n")
    train = resolve_text_corpus(tmp_path).splits["train"]
    lines = train.iter_lines()
    assert next(lines) == (1, "ok")
    with pytest.raises(NlprnnError) as info:
        list(lines)
    message = str(info.value)
    assert message.startswith(
        f"{tmp_path / 'train.txt'}:3: byte 0xff at byte offset 10 of the file (byte 3 of the line)"
    )
    assert "not valid UTF-8" in message


@pytest.mark.parametrize(
    "path", ["no/such/folder", "./missing", "corpus.txt", "owner/corpus.txt", "a\\b", "/abs"]
)
def test_neither_folder_nor_hub_id(path):
    with pytest.raises(NlprnnError) as info:
        resolve_text_corpus(path)
    assert (
        str(info.value)
        == f"'{path}' is neither a folder with train.txt/valid.txt/test.txt nor a hub dataset id"
    )


def test_existing_file_is_rejected(tmp_path):
    path = tmp_path / "wikitext"
    path.write_text("not a folder\n")
    with pytest.raises(NlprnnError, match="is neither a folder with train.txt/valid.txt/test.txt nor a hub"):
        resolve_text_corpus(str(path))


@pytest.mark.parametrize(
    "path, expected",
    [
        ("wikitext", True),
        ("bentrevett/multi30k", True),
        ("a/b/c", False),
        ("x.txt", False),
        ("../data", False),
        ("", False),
    ],
)
def test_looks_like_hub_id(path, expected):
    assert looks_like_hub_id(path) is expected


class FakeHub:
    """Stands in for datasets.load_dataset; records calls and serves rows for the splits it has."""

    def __init__(self, rows_by_split):
        self.rows_by_split = rows_by_split
        self.calls = []

    def __call__(self, path, name=None, *, split, streaming=False):
        self.calls.append((path, name, split, streaming))
        if split not in self.rows_by_split:
            raise ValueError(f"Bad split: {split}. Available splits: {sorted(self.rows_by_split)}")
        return self.rows_by_split[split]


def test_hub_streams_with_mapped_split_names(monkeypatch):
    hub = FakeHub(
        {
            "train": [{"text": " = Title = \n"}, {"text": ""}, {"text": " the cat \n"}],
            "validation": [{"text": " a dog \n"}],
            "test": [{"text": " end \n"}],
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", hub)
    corpus = resolve_text_corpus("wikitext", "wikitext-2-v1")
    assert corpus.source == "hub:wikitext/wikitext-2-v1"
    assert hub.calls == [
        ("wikitext", "wikitext-2-v1", "train", True),
        ("wikitext", "wikitext-2-v1", "validation", True),
        ("wikitext", "wikitext-2-v1", "test", True),
    ]
    assert list(corpus.splits["train"].iter_lines()) == [(1, " = Title = "), (2, ""), (3, " the cat ")]
    valid = corpus.splits["valid"]
    assert valid.location == "hub:wikitext/wikitext-2-v1:validation"
    assert list(valid.iter_lines()) == [(1, " a dog ")]
    expected = hashlib.sha256(b"wikitext/wikitext-2-v1/validation").hexdigest()
    assert valid.fingerprint() == expected


def test_hub_valid_falls_back_and_reads_text_column(monkeypatch):
    hub = FakeHub({"valid": [{"sentence": "hello world"}]})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    corpus = resolve_text_corpus("owner/data", splits=("valid",), text_column="sentence")
    assert [call[2] for call in hub.calls] == ["validation", "valid"]
    assert corpus.splits["valid"].location == "hub:owner/data:valid"
    assert list(corpus.splits["valid"].iter_lines()) == [(1, "hello world")]


def test_hub_bad_rows(monkeypatch):
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        FakeHub({"train": [{"text": "ok"}, {"body": "x"}], "test": [{"text": None}]}),
    )
    corpus = resolve_text_corpus("owner/data", splits=("train", "test"))
    with pytest.raises(
        NlprnnError, match=r"^hub:owner/data:train:2: row has no column 'text'; columns are \['body'\]"
    ):
        list(corpus.splits["train"].iter_lines())
    with pytest.raises(
        NlprnnError, match=r"^hub:owner/data:test:1: column 'text' holds NoneType, expected a string"
    ):
        list(corpus.splits["test"].iter_lines())


def test_hub_missing_split_keeps_original_message(monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", FakeHub({"train": []}))
    with pytest.raises(NlprnnError) as info:
        resolve_text_corpus("owner/data", splits=("train", "test"))
    message = str(info.value)
    assert message.startswith(
        "hub dataset 'owner/data': loading split 'test' failed: ValueError: Bad split: test."
    )
    assert "pass a folder with train.txt/valid.txt/test.txt" in message


def test_unknown_hub_id_offline_gives_clear_error():
    with pytest.raises(NlprnnError) as info:
        resolve_text_corpus("nlprnn-test/no-such-dataset", "cfg")
    message = str(info.value)
    assert message.startswith(
        "hub dataset 'nlprnn-test/no-such-dataset' (name 'cfg'): loading split 'train' failed: "
    )
    assert str(info.value.__cause__) in message  # the library's own explanation is kept
    assert "It is not a local folder either" in message


@pytest.mark.skipif(not WIKITEXT2.is_dir(), reason="needs ../shared/data/wikitext-2 beside the repo")
def test_wikitext2_counts_match_published_figures():
    corpus = resolve_text_corpus(WIKITEXT2)

    def tokens(split):
        return (lm_tokens(line) for _, line in corpus.splits[split].iter_lines())

    counts = {split: sum(len(t) for t in tokens(split)) for split in SPLITS}
    assert counts == {"train": 2_088_628, "valid": 217_646, "test": 245_569}
    vocab = WordVocab.build(tokens("train"), specials=("<unk>", "<eos>"))
    assert len(vocab) == 33_278
    assert vocab.itos[:4] == ["<unk>", "<eos>", "the", ","]
    assert vocab.counts[:2] == [54_625, 36_718]  # <unk> occurrences in the text; one <eos> per line
