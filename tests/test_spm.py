"""SentencePieceTokenizer: in-memory and file training, determinism, save/load and bad model files."""

import pytest

from nlprnn.data.spm import SentencePieceTokenizer
from nlprnn.errors import NlprnnError

LINES = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog", "the mat is on the log"] * 5


@pytest.fixture(scope="module")
def bpe():
    return SentencePieceTokenizer.train(lines=LINES, vocab_size=40, model_type="bpe")


def test_train_from_lines_specials_and_pieces(bpe):
    assert len(bpe) == 40
    assert (bpe.pad_id, bpe.unk_id, bpe.bos_id, bpe.eos_id) == (0, 1, 2, 3)
    assert bpe.encode_pieces("the cat sat") == ["▁the", "▁cat", "▁sat"]
    assert bpe.encode("the cat sat") == [7, 17, 21]
    assert bpe.decode([7, 17, 21]) == "the cat sat"
    # Characters never seen in training become <unk> (id 1) rather than failing.
    assert bpe.encode("xyz") == [26, 1]


def test_train_is_deterministic(bpe):
    again = SentencePieceTokenizer.train(lines=iter(LINES), vocab_size=40, model_type="bpe")
    assert again.fingerprint() == bpe.fingerprint()
    assert len(bpe.fingerprint()) == 64
    unigram = SentencePieceTokenizer.train(lines=LINES, vocab_size=20, model_type="unigram")
    assert unigram.fingerprint() != bpe.fingerprint()
    assert (
        unigram.fingerprint()
        == SentencePieceTokenizer.train(lines=LINES, vocab_size=20, model_type="unigram").fingerprint()
    )
    assert unigram.decode(unigram.encode("the cat sat")) == "the cat sat"


def test_train_from_files_matches_lines(tmp_path, bpe):
    path = tmp_path / "train.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    from_file = SentencePieceTokenizer.train(files=[path], vocab_size=40, model_type="bpe")
    assert from_file.encode("the cat sat") == [7, 17, 21]
    assert [from_file.decode([i]) for i in range(4, 40)] == [bpe.decode([i]) for i in range(4, 40)]


def test_disabled_special_is_none():
    tok = SentencePieceTokenizer.train(lines=LINES, vocab_size=30, pad_id=-1, unk_id=0, bos_id=1, eos_id=2)
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (None, 0, 1, 2)


def test_save_load_roundtrip(tmp_path, bpe):
    path = bpe.save(tmp_path / "tok")
    assert path == tmp_path / "tok" / "spm.model"
    assert sorted(p.name for p in path.parent.iterdir()) == ["spm.model"]
    for where in (path, path.parent):
        loaded = SentencePieceTokenizer.load(where)
        assert loaded.fingerprint() == bpe.fingerprint()
        assert loaded.encode("the dog") == bpe.encode("the dog")


def test_load_rejects_non_model_files(tmp_path):
    for name, data in [("text.model", b"hello, not a model\n"), ("empty.model", b"")]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(NlprnnError, match="not a SentencePiece model") as info:
            SentencePieceTokenizer.load(path)
        assert str(info.value).startswith(str(path))
    with pytest.raises(NlprnnError, match="spm.model: SentencePiece model not found"):
        SentencePieceTokenizer.load(tmp_path)


def test_train_errors():
    with pytest.raises(NlprnnError, match="exactly one of lines= or files="):
        SentencePieceTokenizer.train()
    with pytest.raises(NlprnnError, match="model_type 'word' is not supported"):
        SentencePieceTokenizer.train(lines=LINES, model_type="word")
    with pytest.raises(NlprnnError, match=r"training on lines failed .*Vocabulary size too high \(5000\)"):
        SentencePieceTokenizer.train(lines=LINES, vocab_size=5000)
    with pytest.raises(NlprnnError, match=r"missing\.txt: SentencePiece training file not found"):
        SentencePieceTokenizer.train(files=["missing.txt"])
