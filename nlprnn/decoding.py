"""Greedy and batched beam search for any model that follows the translation contract (see `models/seq2seq.py`).

Both decode a batch of sentences at once and drop sentences from the batch as they finish, so the work per
step shrinks with the batch. Beam search keeps `beam_size` live hypotheses per sentence. At every step it
ranks the 2 x beam_size best extensions: end-of-sentence extensions among the first beam_size become finished
hypotheses (scored with the GNMT length penalty), the best beam_size others go on. A sentence is done when it
has beam_size finished hypotheses; at the length limit only end-of-sentence is allowed. With beam_size 1
this is exactly greedy search, and with a beam wide enough to hold every prefix it is exhaustive search.

GNMT length penalty (Wu et al., 2016): score = log P(y) / ((5 + |y|) / 6) ** alpha, |y| counting the
end-of-sentence token; alpha = 0 ranks by log-probability alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Hypothesis:
    tokens: list[int]  # without bos and eos
    score: float  # log_prob / length penalty: what hypotheses are ranked by
    log_prob: float


def length_penalty(length: int, alpha: float) -> float:
    """GNMT's ((5 + length) / 6) ** alpha, `length` counting the end-of-sentence token."""
    return ((5.0 + length) / 6.0) ** alpha


def select(tree, index: torch.Tensor):
    """Rows `index` (dim 0) of every tensor in a nested dict/list/tuple: reorders or shrinks a decoding state."""
    if isinstance(tree, torch.Tensor):
        return tree.index_select(0, index)
    if isinstance(tree, dict):
        return {key: select(value, index) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(select(value, index) for value in tree)
    return tree


def max_lengths(src_lengths: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """Most tokens (end-of-sentence excluded) a translation of each source may have: ceil(ratio x length)."""
    return torch.ceil(src_lengths.double() * max_ratio).long().clamp(min=1)


def _allowed(log_probs: torch.Tensor, config, at_limit: torch.Tensor) -> torch.Tensor:
    """Padding and beginning-of-sentence are never output; rows at their length limit may only end."""
    log_probs[:, config.pad_id] = float("-inf")
    if config.bos_id != config.eos_id:
        log_probs[:, config.bos_id] = float("-inf")
    if at_limit.any():
        eos = log_probs[at_limit, config.eos_id]
        log_probs[at_limit] = float("-inf")
        log_probs[at_limit, config.eos_id] = eos
    return log_probs


@torch.no_grad()
def greedy_search(model, src: torch.Tensor, src_lengths: torch.Tensor, max_ratio: float = 2.0) -> list[Hypothesis]:
    """The most likely next token at every step, for each sentence of the batch."""
    config = model.config
    limits = max_lengths(src_lengths, max_ratio).to(src.device)
    memory = model.encode(src, src_lengths)
    state = model.init_state(memory)
    live = torch.arange(src.shape[0], device=src.device)
    prev = torch.full_like(live, config.bos_id)
    tokens: list[list[int]] = [[] for _ in range(src.shape[0])]
    log_prob = [0.0] * src.shape[0]
    step = 0
    while len(live):
        log_probs, state = model.decode_step(prev, state, memory)
        log_probs = _allowed(log_probs, config, step >= limits[live])
        best_value, best = log_probs.max(dim=-1)
        ended = best == config.eos_id
        for row, (sentence, token, value) in enumerate(zip(live.tolist(), best.tolist(), best_value.tolist())):
            log_prob[sentence] += value
            if not ended[row]:
                tokens[sentence].append(token)
        if ended.any():  # shrink the batch (memory is the largest tensor: copy it only when rows leave)
            keep = torch.nonzero(~ended).flatten()
            best, state, memory = best[keep], select(state, keep), select(memory, keep)
            live = live[keep]
        prev = best
        step += 1
    return [Hypothesis(t, lp / length_penalty(len(t) + 1, 0.0), lp) for t, lp in zip(tokens, log_prob)]


@torch.no_grad()
def beam_search(model, src: torch.Tensor, src_lengths: torch.Tensor, beam_size: int = 5, alpha: float = 0.6,
                max_ratio: float = 2.0, n_best: int = 1) -> list[list[Hypothesis]]:
    """The n_best finished hypotheses of each sentence, best first."""
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must lie in [1, beam_size={beam_size}], got {n_best}")
    config, device, k = model.config, src.device, beam_size
    batch = src.shape[0]
    limits = max_lengths(src_lengths, max_ratio).to(device)
    memory = select(model.encode(src, src_lengths), torch.arange(batch, device=device).repeat_interleave(k))
    state = model.init_state(memory)
    live = torch.arange(batch, device=device)  # original index of each sentence still decoding
    # Only the first beam of each sentence starts alive, so the first step picks k different tokens.
    scores = torch.full((batch, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    tokens = torch.empty(batch * k, 0, dtype=torch.long, device=device)
    prev = torch.full((batch * k,), config.bos_id, dtype=torch.long, device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    step = 0
    while len(live):
        n = len(live)
        log_probs, state = model.decode_step(prev, state, memory)
        vocab = log_probs.shape[-1]
        log_probs = _allowed(log_probs, config, (step >= limits[live]).repeat_interleave(k))
        # The 2k best extensions of a sentence are among the 2k best tokens of each of its beams: ranking those
        # k x 2k instead of all k x V candidates gives the same result for a fraction of the work.
        width = min(2 * k, vocab)
        beam_best, beam_token = log_probs.topk(width, dim=1)
        candidates = (scores[:, :, None] + beam_best.view(n, k, width)).view(n, k * width)
        top_scores, top = candidates.topk(min(2 * k, k * width), dim=1)
        top_beam = top // width
        top_token = beam_token.view(n, k * width).gather(1, top)
        is_eos = top_token == config.eos_id

        ending = is_eos[:, :k] & torch.isfinite(top_scores[:, :k])
        if ending.any():
            history = tokens.view(n, k, -1)
            for row, rank in torch.nonzero(ending).tolist():
                value = float(top_scores[row, rank])
                words = history[row, top_beam[row, rank]].tolist()
                finished[int(live[row])].append(Hypothesis(words, value / length_penalty(len(words) + 1, alpha), value))

        going_on = top_scores.masked_fill(is_eos, float("-inf")).topk(k, dim=1)
        scores = going_on.values
        beam = top_beam.gather(1, going_on.indices)
        token = top_token.gather(1, going_on.indices)
        done = torch.tensor([len(finished[s]) >= k for s in live.tolist()], device=device)
        done |= ~torch.isfinite(scores).any(dim=1)
        keep = torch.nonzero(~done).flatten()
        rows = (keep[:, None] * k + beam[keep]).flatten()  # the beams each kept sentence extends
        tokens = torch.cat([tokens[rows], token[keep].reshape(-1, 1)], dim=1)
        state = select(state, rows)
        if len(keep) < n:  # a sentence's k beams share its memory rows, so only leaving sentences need a copy
            memory = select(memory, (keep[:, None] * k + torch.arange(k, device=device)).flatten())
        live, scores, prev = live[keep], scores[keep], token[keep].flatten()
        step += 1
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in finished]


def translate_batch(model, src, src_lengths, beam_size: int = 1, alpha: float = 0.6, max_ratio: float = 2.0,
                    n_best: int = 1) -> list[list[Hypothesis]]:
    """Greedy search for beam_size 1 (same output, less bookkeeping), beam search otherwise."""
    if beam_size == 1 and n_best == 1:
        return [[h] for h in greedy_search(model, src, src_lengths, max_ratio)]
    return beam_search(model, src, src_lengths, beam_size, alpha, max_ratio, n_best)


@torch.no_grad()
def translate_texts(model, tokenizers: dict, sentences: list[str], beam_size: int = 5, alpha: float = 0.6,
                    max_ratio: float = 2.0, n_best: int = 1, batch_size: int = 64,
                    max_length: int = 0) -> list[list[str]]:
    """Detokenised n-best translations of raw `sentences`, in order, decoded in length-sorted batches.

    `tokenizers` holds the "src" and "tgt" SentencePiece tokenizers; a source longer than max_length pieces
    (when > 0) is cut to fit, never dropped.
    """
    from nlprnn.data.seq_batching import pad

    config = model.config
    device = next(model.parameters()).device
    ids = []
    for sentence in sentences:
        pieces = tokenizers["src"].encode(sentence.strip())
        ids.append((pieces[: max_length - 1] if max_length > 0 else pieces) + [config.eos_id])
    out: list[list[str]] = [[] for _ in sentences]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        src, lengths = pad([ids[i] for i in chunk], config.pad_id)
        hyps = translate_batch(model, src.to(device), lengths.to(device), beam_size, alpha, max_ratio, n_best)
        for i, nbest in zip(chunk, hyps):
            out[i] = [tokenizers["tgt"].decode(h.tokens) for h in nbest]
    return out
