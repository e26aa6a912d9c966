import json

import pytest
import torch
from safetensors.torch import save_file

from nlprnn.data.vocab import WordVocab
from nlprnn.errors import NlprnnError
from nlprnn.hub import from_pretrained, save_pretrained
from nlprnn.models import build_model

VOCAB = WordVocab.build([["a", "b", "c", "d", "e", "f"]], specials=("<unk>", "<eos>"))
FAMILIES = {
    "lstm_tied": ("lstm", dict(embedding_size=8, hidden_size=8, num_layers=2, tie_weights=True)),
    "gru_adaptive": ("gru", dict(embedding_size=8, hidden_size=8, head="adaptive", adaptive_cutoffs=[4])),
    "rnn_relu": ("rnn_relu", dict(embedding_size=6, hidden_size=8)),
    "transformer": ("transformer", dict(d_model=8, n_heads=2, n_layers=1, d_ff=16, context_size=16)),
}


def build(key):
    torch.manual_seed(0)
    name, values = FAMILIES[key]
    return build_model(name, vocab_size=len(VOCAB), **values).eval()


@pytest.mark.parametrize("key", sorted(FAMILIES))
def test_round_trip_gives_identical_outputs(tmp_path, key):
    model = build(key)
    save_pretrained(model, tmp_path / "ckpt", vocab=VOCAB)
    loaded, vocab = from_pretrained(tmp_path / "ckpt")
    x = torch.randint(0, len(VOCAB), (2, 5))
    assert vocab.itos == VOCAB.itos
    assert torch.equal(model(x, x)[0], loaded(x, x)[0])
    assert torch.equal(model.next_token_logprobs(x)[0], loaded.next_token_logprobs(x)[0])
    if key == "lstm_tied":
        assert loaded.head.weight is loaded.embedding.weight


def _pack_rnn_weights_like_cudnn(rnn: torch.nn.RNNBase) -> None:
    """Make every RNN weight a view into one flat buffer, as flatten_parameters does on CUDA."""
    weights = list(rnn.parameters())
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    offset = 0
    for w in weights:
        w.data = flat[offset:offset + w.numel()].view_as(w)
        offset += w.numel()


def test_weights_packed_in_one_buffer_save_and_load(tmp_path):
    # A GPU-trained LSTM: safetensors.torch.save_model refuses views of a larger storage.
    model = build("lstm_tied")
    _pack_rnn_weights_like_cudnn(model.rnn)
    assert model.rnn.weight_hh_l0.untyped_storage().nbytes() > model.rnn.weight_hh_l0.numel() * 4
    save_pretrained(model, tmp_path / "ckpt", vocab=VOCAB)
    loaded, _ = from_pretrained(tmp_path / "ckpt")
    x = torch.randint(0, len(VOCAB), (2, 5))
    assert torch.equal(model(x, x)[0], loaded(x, x)[0])
    assert loaded.head.weight is loaded.embedding.weight


def test_save_is_atomic(tmp_path, monkeypatch):
    model = build("lstm_tied")
    save_pretrained(model, tmp_path / "ckpt", vocab=VOCAB)
    before = (tmp_path / "ckpt" / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("nlprnn.hub.save_file", crash)
    with pytest.raises(RuntimeError):
        save_pretrained(build("rnn_relu"), tmp_path / "ckpt", vocab=VOCAB)
    assert (tmp_path / "ckpt" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = build("lstm_tied")
    ckpt = save_pretrained(model, tmp_path / "ckpt", vocab=VOCAB)
    weights = ckpt / "model.safetensors"

    weights.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    with pytest.raises(NlprnnError, match="not a valid safetensors file"):
        from_pretrained(ckpt)

    state = {k: v for k, v in model.state_dict().items() if k != "head.weight"}
    state["extra.weight"] = torch.zeros(1)
    state["embedding.weight"] = torch.zeros(3, 8)
    del state["rnn.bias_hh_l1"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    with pytest.raises(NlprnnError) as e:
        from_pretrained(ckpt)
    msg = str(e.value)
    assert "missing: rnn.bias_hh_l1" in msg and "unexpected: extra.weight" in msg
    assert "shape mismatch: embedding.weight (3, 8) vs model (8, 8)" in msg

    save_pretrained(model, ckpt, vocab=VOCAB)
    WordVocab.build([["x", "y"]], specials=("<unk>", "<eos>")).save(ckpt / "vocab.json")
    with pytest.raises(NlprnnError, match="vocab.json: does not match the vocabulary"):
        from_pretrained(ckpt)

    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "model": "lstmx"}))
    with pytest.raises(NlprnnError, match="config.json: .*lstmx"):
        from_pretrained(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(NlprnnError, match="config.json: not a JSON checkpoint config"):
        from_pretrained(ckpt)
    with pytest.raises(NlprnnError, match="not a checkpoint directory"):
        from_pretrained(tmp_path / "nothing")
