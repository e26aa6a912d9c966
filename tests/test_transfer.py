"""Transfer: word-vector files, alignment with case fallback, LM -> tagger copies, hub ids offline, safe imports."""

import json
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from conftest import tiny_ner_overrides
from test_resume_distributed import final_weights, launch

from nlprnn.data.vocab import WordVocab
from nlprnn.errors import NlprnnError
from nlprnn.hub import from_pretrained, import_legacy_state_dict, load_state_dict_checked, save_pretrained
from nlprnn.models import build_model
from nlprnn.transfer import align_vectors, lm_word_vectors, read_word_vectors, transfer_from_checkpoint

WORDS = ["the", "Paris", "cat", "Maria"]
VECTORS = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


def write_text_vectors(path, header):
    lines = ([f"{len(WORDS)} 3"] if header else []) + [
        " ".join([w, *map(str, v.tolist())]) for w, v in zip(WORDS, VECTORS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_word2vec_binary(path):
    with open(path, "wb") as f:
        f.write(f"{len(WORDS)} 3\n".encode())
        for word, vector in zip(WORDS, VECTORS):
            f.write(word.encode() + b" " + struct.pack("<3f", *vector) + b"\n")
    return path


@pytest.mark.parametrize("kind", ["glove.txt", "word2vec.txt", "fasttext.vec", "word2vec.bin"])
def test_every_vector_format_reads_the_same(tmp_path, kind):
    path = tmp_path / kind
    if kind.endswith(".bin"):
        write_word2vec_binary(path)
    else:
        write_text_vectors(path, header=not kind.startswith("glove"))
    words, vectors = read_word_vectors(path)
    assert words == WORDS and np.allclose(vectors, VECTORS)


def test_bad_vector_files_name_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("a 1 2 3\nb 1 2\n", encoding="utf-8")
    with pytest.raises(NlprnnError, match=r"bad.txt:2: 2 numbers after the word, expected 3"):
        read_word_vectors(path)
    with pytest.raises(NlprnnError, match="not found"):
        read_word_vectors(tmp_path / "missing.txt")


def test_alignment_falls_back_to_lower_case_and_reports_coverage():
    weight = torch.zeros(6, 3)
    target = ["<pad>", "the", "The", "paris", "dog", "cat"]
    report = align_vectors(target, WORDS, torch.from_numpy(VECTORS), weight, skip=("<pad>",))
    assert report == {"total": 5, "exact": 2, "lowercase": 2, "missing": 1, "coverage": 0.8}
    assert torch.equal(weight[2], torch.from_numpy(VECTORS[0]))  # The -> the
    assert torch.equal(weight[3], torch.from_numpy(VECTORS[1]))  # paris -> Paris (lower-cased match)
    assert weight[4].abs().sum() == 0 and weight[0].abs().sum() == 0
    with pytest.raises(NlprnnError, match="3 dimensions, the model's embedding 4"):
        align_vectors(target, WORDS, torch.from_numpy(VECTORS), torch.zeros(6, 4))


def test_matched_scale_gives_copied_vectors_the_initial_spread_and_keeps_their_geometry():
    torch.manual_seed(0)
    weight = torch.randn(50, 8) * 0.05  # a fresh embedding
    initial_std = weight.std().item()
    source = torch.randn(40, 8) * 3.0  # e.g. Light RNN row+column vectors: far larger
    words = [f"w{i}" for i in range(40)]
    report = align_vectors([f"w{i}" for i in range(50)], words, source, weight, match_scale=True)
    assert report["exact"] == 40 and report["scale"] == pytest.approx(initial_std / source.std().item(), rel=0.05)
    assert weight[:40].std().item() == pytest.approx(initial_std, rel=0.1)
    assert torch.allclose(weight[:40], source * report["scale"])  # one factor: angles and relative norms kept
    assert "scale" not in align_vectors(words, words, source, torch.zeros(40, 8))


def test_alignment_normalises_source_words_as_the_target_did():
    # A tagger that maps digits to zero has 0000 where the LM has 1996 and 2011: the most frequent (first) wins.
    source = torch.arange(9, dtype=torch.float32).reshape(3, 3)
    weight = torch.zeros(3, 3)
    report = align_vectors(["<pad>", "0000", "Paris"], ["1996", "2011", "Paris"], source, weight, skip=("<pad>",),
                           normalise=lambda w: "".join("0" if c.isdigit() else c for c in w))
    assert report["exact"] == 2 and report["missing"] == 0
    assert torch.equal(weight[1], source[0]) and torch.equal(weight[2], source[2])
    assert align_vectors(["0000"], ["1996"], source[:1], torch.zeros(1, 3))["missing"] == 1  # without it


def saved_lm(tmp_path, name="lstm", **values):
    torch.manual_seed(0)
    vocab = WordVocab.build([["the", "cat", "Paris", "saw", "Maria"]], specials=("<unk>", "<eos>"))
    model = build_model(name, vocab_size=len(vocab), **values)
    with torch.no_grad():  # as if trained: no zero biases, which a copy could not be told from
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    save_pretrained(model, tmp_path / name, vocab=vocab)
    return model, vocab, tmp_path / name


def tagger(vocab_words, **values):
    torch.manual_seed(1)
    settings = dict(vocab_size=len(vocab_words), char_vocab_size=5, tags=["O", "S-PER"], embedding_size=8,
                    char_features="none", hidden_size=16, dropout=0.0)
    settings.update(values)
    return build_model("birnn_tagger", **settings)


def test_lm_to_tagger_copies_exactly_what_it_reports(tmp_path):
    lm, vocab, directory = saved_lm(tmp_path, embedding_size=8, hidden_size=8, num_layers=1)
    words = ["<pad>", "<unk>", "the", "CAT", "Maria", "dog"]
    model = tagger(words)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = transfer_from_checkpoint(str(directory), model, words)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == set(report["pretrained_parameters"]) == {
        "embedding.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "rnn.bias_ih_l0", "rnn.bias_hh_l0"}
    assert report["embedding_coverage"] == {"total": 4, "exact": 2, "lowercase": 1, "missing": 1, "coverage": 0.75}
    assert torch.equal(model.embedding.weight[3], lm.embedding.weight[vocab["cat"]])
    assert torch.equal(model.rnn.weight_hh_l0, lm.rnn.weight_hh_l0)
    assert torch.equal(model.rnn.weight_hh_l0_reverse, before["rnn.weight_hh_l0_reverse"])  # left as it was
    assert report["skipped"] == []
    # With character features the input layer no longer fits: it is skipped, and says why.
    report = transfer_from_checkpoint(str(directory), tagger(words, char_features="cnn"), words)
    assert report["skipped"] == ["rnn.weight_ih_l0: shape (32, 8) into (32, 58)"]  # 8 + 50 CNN filters


def test_a_lightrnn_word_vector_is_its_row_and_column_vectors(tmp_path):
    lm, vocab, directory = saved_lm(tmp_path, "lightrnn", embedding_size=4, hidden_size=8, num_layers=1)
    vectors = lm_word_vectors(lm)
    w = vocab["Paris"]
    assert torch.equal(vectors[w], torch.cat([lm.row_embedding.weight[lm.table.word_row[w]],
                                              lm.col_embedding.weight[lm.table.word_col[w]]]))
    model = tagger(["<pad>", "<unk>", "Paris"], embedding_size=8)
    report = transfer_from_checkpoint(str(directory), model, ["<pad>", "<unk>", "Paris"])
    assert torch.equal(model.embedding.weight[2], vectors[w]) and report["embedding_coverage"]["exact"] == 1
    # transfer.vector_scale=match: the same vectors, times one factor reported with the coverage
    words = ["<pad>", "<unk>", "Paris", "the"]
    model = tagger(words, embedding_size=8)
    scale = transfer_from_checkpoint(str(directory), model, words, match_scale=True)["embedding_coverage"]["scale"]
    assert scale != 1.0 and torch.allclose(model.embedding.weight[2], vectors[w] * scale)


def test_checkpoint_mismatch_lists_names_and_strict_false_reports_them(tmp_path):
    _, _, directory = saved_lm(tmp_path, embedding_size=8, hidden_size=8, num_layers=1)
    other = build_model("lstm", vocab_size=7, embedding_size=8, hidden_size=8, num_layers=2)
    with pytest.raises(NlprnnError, match=r"missing: rnn.bias_hh_l1.*strict=False"):
        load_state_dict_checked(other, directory / "model.safetensors")
    report = load_state_dict_checked(other, directory / "model.safetensors", strict=False)
    assert "rnn.weight_hh_l1" in report["missing"] and report["unexpected"] == []


def test_hub_ids_load_from_the_local_cache_offline(tmp_path, monkeypatch):
    lm, vocab, directory = saved_lm(tmp_path, embedding_size=8, hidden_size=8, num_layers=1)
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny-lm" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in directory.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (cache / "models--someone--tiny-lm" / "refs").mkdir()
    (cache / "models--someone--tiny-lm" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    loaded, loaded_vocab = from_pretrained("someone/tiny-lm")
    assert loaded_vocab.itos == vocab.itos
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), lm.state_dict().values()))
    with pytest.raises(NlprnnError, match="hub model 'someone/missing'"):
        from_pretrained("someone/missing")


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"embedding.weight": RunsCode(str(marker))}))
    model = build_model("lstm", vocab_size=7, embedding_size=8, hidden_size=8, num_layers=1)
    with pytest.raises(NlprnnError, match="refused"):
        import_legacy_state_dict(model, path)
    assert not marker.exists()
    # A plain state dict saved by torch.save imports.
    good = tmp_path / "good.pt"
    torch.save(model.state_dict(), good)
    assert import_legacy_state_dict(build_model("lstm", vocab_size=7, embedding_size=8, hidden_size=8,
                                                num_layers=1), good) == {"missing": [], "unexpected": [],
                                                                         "shape_mismatch": []}


@pytest.mark.slow
def test_recipe_init_from_with_a_frozen_embedding_keeps_the_lm_vectors(conll_corpus, tmp_path):
    words = [line.split()[0] for line in (conll_corpus / "train.txt").read_text().splitlines()
             if line and not line.startswith("-DOCSTART-")]
    vocab = WordVocab.build([words], specials=("<unk>", "<eos>"))
    torch.manual_seed(0)
    lm = build_model("lstm", vocab_size=len(vocab), embedding_size=16, hidden_size=8, num_layers=1)
    save_pretrained(lm, tmp_path / "lm", vocab=vocab)
    run_dir = tmp_path / "run"
    launch(tiny_ner_overrides(conll_corpus, run_dir, **{
        "model.init_from": str(tmp_path / "lm"), "model.char_features": "none", "transfer.freeze": "{embedding: -1}",
        "data.digits_to_zero": False,
        "train.epochs": 1}), recipe="ner.py")
    record = json.loads((run_dir / "result.json").read_text())
    assert record["transfer"]["embedding_coverage"]["missing"] == 0
    assert record["config"]["transfer"]["init_from"] == str(tmp_path / "lm")
    final = final_weights(run_dir)
    tagger_vocab = WordVocab.load(run_dir / "model" / "vocab.json")
    row = tagger_vocab["Paris"]
    assert torch.equal(final["embedding.weight"][row], lm.embedding.weight[vocab["Paris"]].detach())
    assert (run_dir / "model" / "README.md").read_text().startswith("---\nlibrary_name: nlprnn")


@pytest.mark.slow
def test_translation_recipe_takes_word_vectors_for_its_source_pieces(mt_corpus, tmp_path):
    from conftest import tiny_mt_overrides

    german = sorted({w.strip(".").lower() for line in (mt_corpus / "train.de").read_text().splitlines()
                     for w in line.split()})
    vectors = tmp_path / "de.vec"
    vectors.write_text(f"{len(german)} 16\n" + "".join(f"{w} {' '.join(['0.5'] * 16)}\n" for w in german))
    run_dir = tmp_path / "run"
    launch(tiny_mt_overrides(mt_corpus, run_dir, **{"model.word_vectors": str(vectors), "train.max_steps": 2,
                                                    "data.valid_subset": 5}), recipe="translate.py")
    report = json.loads((run_dir / "result.json").read_text())["transfer"]["word_vectors"]
    assert report["vectors"] == len(german) and report["exact"] + report["lowercase"] > 0
    assert report["exact"] + report["lowercase"] + report["missing"] == report["total"]


@pytest.mark.slow
def test_add_source_words_gives_unseen_words_their_lm_vectors(conll_corpus, tmp_path):
    words = [line.split()[0] for line in (conll_corpus / "train.txt").read_text().splitlines()
             if line and not line.startswith("-DOCSTART-")]
    vocab = WordVocab.build([words + ["Zanzibar", "Kathmandu", "Zanzibar"]], specials=("<unk>", "<eos>"))
    torch.manual_seed(0)
    lm = build_model("lstm", vocab_size=len(vocab), embedding_size=16, hidden_size=8, num_layers=1)
    save_pretrained(lm, tmp_path / "lm", vocab=vocab)
    run_dir = tmp_path / "run"
    launch(tiny_ner_overrides(conll_corpus, run_dir, **{
        "model.init_from": str(tmp_path / "lm"), "transfer.add_source_words": True, "model.char_features": "none",
        "transfer.freeze": "{embedding: -1}", "data.digits_to_zero": True, "train.epochs": 1}), recipe="ner.py")
    record = json.loads((run_dir / "result.json").read_text())
    assert record["data"]["source_words_added"] == 2
    tagger_vocab = WordVocab.load(run_dir / "model" / "vocab.json")
    assert tagger_vocab.itos[-2:] == ["Zanzibar", "Kathmandu"] and "<eos>" not in tagger_vocab
    final = final_weights(run_dir)
    # The data's years are one word to the tagger (digits to zero): it takes the LM's most frequent year.
    first_year = next(w for w in vocab.itos if w.isdigit())
    for word, source in (("Zanzibar", "Zanzibar"), ("Kathmandu", "Kathmandu"), ("0000", first_year)):
        assert torch.equal(final["embedding.weight"][tagger_vocab[word]], lm.embedding.weight[vocab[source]].detach())
    assert record["transfer"]["embedding_coverage"]["missing"] == 0


def test_add_source_words_needs_a_source_and_a_word_vocabulary(tmp_path):
    from nlprnn.config import load_config

    with pytest.raises(NlprnnError, match="needs a source"):
        load_config(None, ["task=ner", "transfer.add_source_words=true"])
    with pytest.raises(NlprnnError, match="vector_scale=match needs a source"):
        load_config(None, ["task=ner", "transfer.vector_scale=match"])
    with pytest.raises(NlprnnError, match="vector_scale"):
        load_config(None, ["task=ner", "transfer.vector_scale=unit", f"model.init_from={tmp_path}"])
    with pytest.raises(NlprnnError, match="only the ner task"):
        load_config(None, ["task=mt", "transfer.add_source_words=true", f"model.init_from={tmp_path}"])
