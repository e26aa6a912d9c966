"""CoNLL column files: both layouts, -DOCSTART-, the real CoNLL-2003 counts, and errors with file and line."""

import pytest
from conftest import SHARED_DATA

from nlprnn.data.conll import read_conll, resolve_tagging_corpus
from nlprnn.data.corpora import FileSplit
from nlprnn.data.tags import spans
from nlprnn.errors import NlprnnError

FOUR_COLUMNS = """-DOCSTART- -X- -X- O

EU NNP B-NP I-ORG
rejects VBZ B-VP O
German JJ B-NP I-MISC
call NN I-NP O

Peter NNP B-NP I-PER
Blackburn NNP I-NP I-PER
"""


def write(tmp_path, text, name="train.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return FileSplit("train", path)


def test_four_column_conll_2003_layout(tmp_path):
    sentences = read_conll(write(tmp_path, FOUR_COLUMNS))
    assert [s.tokens for s in sentences] == [["EU", "rejects", "German", "call"], ["Peter", "Blackburn"]]
    assert sentences[0].tags == ["I-ORG", "O", "I-MISC", "O"] and sentences[1].line == 8


def test_two_column_tab_separated_layout(tmp_path):
    text = "Paris\tB-LOC\nis\tO\nnice\tO\n\nBob\tB-PER\n"
    sentences = read_conll(write(tmp_path, text), scheme="iob2", strict=True)
    assert [spans(s.tags, "iob2") for s in sentences] == [[("LOC", 0, 1)], [("PER", 0, 1)]]


@pytest.mark.parametrize("text, options, message", [
    ("a NN O\nb NN\n", {}, r"train.txt:2: 2 column\(s\), expected 3 like line 1"),
    ("a O\n", {"tag_column": 3}, r"train.txt:1: data.tag_column=3, but the line has 2"),
    ("a B_PER\n", {}, r"train.txt:1: tag 'B_PER': expected O or a prefix"),
    ("a O\nb I-PER\n", {"scheme": "iob2", "strict": True}, r"train.txt:1: sentence starting here: tag 'I-PER'"),
    ("\n\n-DOCSTART- O\n", {}, r"train.txt: no sentences"),
])
def test_bad_input_names_file_and_line(tmp_path, text, options, message):
    with pytest.raises(NlprnnError, match=message):
        read_conll(write(tmp_path, text), **options)


def test_missing_split_file(tmp_path):
    (tmp_path / "train.txt").write_text("a O\n")
    with pytest.raises(NlprnnError, match="valid.txt: missing or empty"):
        resolve_tagging_corpus(str(tmp_path))


@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(), reason="needs ../shared/data/conll2003")
def test_real_conll_2003_counts():
    splits = resolve_tagging_corpus(str(SHARED_DATA / "conll2003"))
    expected = {"train": (14041, 23499), "valid": (3250, 5942), "test": (3453, 5648)}
    for name, (sentences, entities) in expected.items():
        read = read_conll(splits[name], scheme="iob1")
        assert len(read) == sentences
        assert sum(len(spans(s.tags, "iob1")) for s in read) == entities
