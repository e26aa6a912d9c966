"""Attention seq2seq and decoding: masks, teacher forcing = step by step, beam 1 = greedy, exhaustive search."""

import itertools
import math

import pytest
import torch

from nlprnn.decoding import beam_search, greedy_search, length_penalty, max_lengths, select
from nlprnn.errors import NlprnnError
from nlprnn.models.seq2seq import Attention, Seq2Seq, Seq2SeqConfig
from nlprnn.models.transformer_seq2seq import TransformerSeq2Seq, TransformerSeq2SeqConfig

PAD, UNK, BOS, EOS = 0, 1, 2, 3
VARIANTS = [
    dict(cell="gru", attention="bahdanau", input_feeding=True),
    dict(cell="lstm", attention="luong_general", input_feeding=False),
    dict(cell="lstm", attention="luong_dot", input_feeding=True, encoder_layers=2, decoder_layers=2),
    dict(family="transformer", positions="sinusoidal"),
    dict(family="transformer", positions="learned", share_embeddings=True, tie_output=False),
]


def tiny(tgt_vocab=9, seed=0, family="rnn", **overrides):
    torch.manual_seed(seed)
    values = dict(src_vocab_size=11, tgt_vocab_size=tgt_vocab, pad_id=PAD, bos_id=BOS, eos_id=EOS, dropout=0.0)
    if family == "transformer":
        if overrides.get("share_embeddings"):
            values["src_vocab_size"] = tgt_vocab = max(tgt_vocab, 11)
            values["tgt_vocab_size"] = tgt_vocab
        values.update(d_model=8, n_heads=2, encoder_layers=2, decoder_layers=2, d_ff=16, init_range=0.5)
        values.update(overrides)
        return TransformerSeq2Seq(TransformerSeq2SeqConfig(**values)).eval()
    values.update(embedding_size=6, hidden_size=8, init_range=0.8)
    values.update(overrides)
    return Seq2Seq(Seq2SeqConfig(**values)).eval()


def sources():
    src = torch.tensor([[4, 5, 6, 7, 3], [8, 9, 3, 0, 0], [10, 3, 0, 0, 0]])
    return src, (src != PAD).sum(1)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padding_changes_nothing(variant):
    model = tiny(**variant)
    src, lengths = sources()
    tgt = torch.tensor([[BOS, 4, 5, 6]] * 3)
    together = model(src, lengths, tgt)
    for row in range(3):
        alone = model(src[row:row + 1, : lengths[row]], lengths[row:row + 1], tgt[row:row + 1])
        torch.testing.assert_close(together[row:row + 1], alone, rtol=1e-5, atol=1e-5)
    if isinstance(model, TransformerSeq2Seq):
        return
    with torch.no_grad():
        memory = model.encode(src, lengths)
        _, weights = model.attention(memory["outputs"][:, :1], memory["keys"], memory["outputs"], memory["mask"])
    assert float(weights[1, 0, 3:].abs().max()) == 0.0 and float(weights[2, 0, 2:].abs().max()) == 0.0
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_teacher_forcing_equals_decoding_step_by_step(variant):
    model = tiny(**variant)
    src, lengths = sources()
    tgt = torch.tensor([[BOS, 4, 5, 6], [BOS, 7, 8, 1], [BOS, 6, 6, 6]])
    logits = model(src, lengths, tgt)
    memory = model.encode(src, lengths)
    state = model.init_state(memory)
    for t in range(tgt.shape[1]):
        log_probs, state = model.decode_step(tgt[:, t], state, memory)
        torch.testing.assert_close(log_probs, torch.log_softmax(logits[:, t], -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("input_feeding", [True, False])
def test_lstm_decoder_trains_in_float32_under_bf16_autocast(input_feeding):
    # The bridge's bf16 output is the decoder's initial state; the LSTM itself runs in float32 on the CPU.
    model = tiny(cell="lstm", input_feeding=input_feeding).train()
    src, lengths = sources()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(src, lengths, torch.tensor([[BOS, 4, 5, 6]] * 3))
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.decoder.parameters())


def test_one_step_lstm_runs_on_the_native_kernel_and_restores_the_flag():
    from nlprnn.models.common import run_rnn

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(6, 5, batch_first=True)
    steps = torch.randn(2, 4, 6)
    whole, _ = lstm(steps)
    state, outputs = None, []
    before = torch.backends.mkldnn.enabled
    for t in range(4):
        output, state = run_rnn(lstm, steps[:, t:t + 1], state)
        outputs.append(output)
        assert torch.backends.mkldnn.enabled == before
    torch.testing.assert_close(torch.cat(outputs, 1), whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError):
        run_rnn(lstm, torch.randn(2, 1, 7))  # a wrong input size fails inside the context ...
    assert torch.backends.mkldnn.enabled == before  # ... which still restores the flag


@pytest.mark.parametrize("variant", VARIANTS)
def test_beam_of_one_is_greedy(variant):
    model = tiny(**variant)
    src, lengths = sources()
    greedy = greedy_search(model, src, lengths, max_ratio=2.0)
    beam = beam_search(model, src, lengths, beam_size=1, alpha=0.0, max_ratio=2.0)
    for g, (b,) in zip(greedy, beam):
        assert g.tokens == b.tokens and g.log_prob == pytest.approx(b.log_prob, abs=1e-5)
    assert any(len(g.tokens) > 0 for g in greedy)


@torch.no_grad()
def sequence_log_prob(model, src, lengths, tokens):
    memory = model.encode(src, lengths)
    state = model.init_state(memory)
    total, prev = 0.0, BOS
    for token in [*tokens, EOS]:
        log_probs, state = model.decode_step(torch.tensor([prev]), state, memory)
        total += float(log_probs[0, token])
        prev = token
    return total


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("variant", VARIANTS)
def test_wide_beam_finds_the_exhaustive_optimum(variant, alpha):
    model = tiny(tgt_vocab=6, **variant)  # outputs: unk, 4, 5 (more with shared embeddings) and end-of-sentence
    words_allowed = [t for t in range(model.config.tgt_vocab_size) if t not in (PAD, BOS, EOS)]
    src, lengths = torch.tensor([[4, 5, 3]]), torch.tensor([3])
    limit = 3 if len(words_allowed) <= 3 else 2  # = ceil(max_ratio x 3 source tokens)
    best = None
    for n in range(limit + 1):
        for words in itertools.product(words_allowed, repeat=n):
            log_prob = sequence_log_prob(model, src, lengths, list(words))
            score = log_prob / length_penalty(n + 1, alpha)
            if best is None or score > best[0]:
                best = (score, list(words))
    every_prefix = sum(len(words_allowed) ** n for n in range(limit + 1))
    (hypothesis,) = beam_search(model, src, lengths, beam_size=every_prefix, alpha=alpha,
                                 max_ratio=limit / 3)[0]
    assert hypothesis.tokens == best[1] and hypothesis.score == pytest.approx(best[0], abs=1e-5)


def test_n_best_is_ordered_and_scored_with_the_length_penalty():
    model = tiny(**VARIANTS[0])
    src, lengths = sources()
    for hyps in beam_search(model, src, lengths, beam_size=4, alpha=0.6, n_best=4):
        assert len(hyps) == 4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        for h in hyps:
            assert h.score == pytest.approx(h.log_prob / ((5 + len(h.tokens) + 1) / 6) ** 0.6)
    assert length_penalty(4, 0.6) == pytest.approx(1.5 ** 0.6) and length_penalty(7, 0.0) == 1.0
    assert max_lengths(torch.tensor([3, 10]), 1.5).tolist() == [5, 15]


def test_hypotheses_score_what_the_model_says():
    model = tiny(**VARIANTS[1])
    src, lengths = sources()
    for row, hyps in enumerate(beam_search(model, src, lengths, beam_size=3, alpha=0.6, n_best=3)):
        one, one_length = src[row:row + 1, : lengths[row]], lengths[row:row + 1]
        for h in hyps:
            assert h.log_prob == pytest.approx(sequence_log_prob(model, one, one_length, h.tokens), abs=1e-4)
            assert len(h.tokens) <= math.ceil(2.0 * int(lengths[row]))


def test_select_reorders_nested_states():
    state = {"h": torch.arange(6).view(3, 2), "cache": [(torch.arange(3), torch.arange(3) * 10)]}
    picked = select(state, torch.tensor([2, 0]))
    assert picked["h"].tolist() == [[4, 5], [0, 1]] and picked["cache"][0][1].tolist() == [20, 0]


def test_config_errors():
    with pytest.raises(NlprnnError, match="luong_dot attention needs"):
        Attention("luong_dot", 8, 6)
    with pytest.raises(NlprnnError, match="tie_target_embeddings needs"):
        Seq2SeqConfig(tie_target_embeddings=True, embedding_size=4, hidden_size=8)
    with pytest.raises(NlprnnError, match="hidden_size: expected an even number"):
        Seq2SeqConfig(hidden_size=7)
    tied = tiny(embedding_size=8, tie_target_embeddings=True)
    assert tied.output.weight is tied.tgt_embedding.weight
