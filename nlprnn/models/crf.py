"""Linear-chain CRF over padded batches: log-likelihood by the forward algorithm, Viterbi and n-best Viterbi.

score(y) = start[y_1] + sum_t emissions[t, y_t] + sum_t transitions[y_{t-1}, y_t] + end[y_L], and
log P(y | x) = score(y) - log Z with log Z = logsumexp over every tag sequence (the forward algorithm, vectorised
over the batch; padded positions leave the running scores unchanged). Sentences are left-aligned: mask[:, 0]
is all True.

Transition constraints (a tag scheme's invalid transitions, see `nlprnn.data.tags.allowed_transition`) are added
as a large negative constant to the learned scores, in training and decoding alike, so the model never
spends probability on sequences the scheme forbids and Viterbi never outputs one.
"""

from __future__ import annotations

import torch
from torch import nn

FORBIDDEN = -1e4  # a forbidden transition's score: finite, so gradients stay finite, and beyond any real path


class CRF(nn.Module):
    def __init__(self, num_tags: int, allowed: torch.Tensor | None = None, allowed_start: torch.Tensor | None = None,
                 allowed_end: torch.Tensor | None = None):
        """`allowed` (T, T) bool: transition i -> j permitted; `allowed_start` / `allowed_end` (T,) likewise."""
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.zeros(num_tags, num_tags))
        self.start = nn.Parameter(torch.zeros(num_tags))
        self.end = nn.Parameter(torch.zeros(num_tags))

        def penalty(mask, shape):
            if mask is None:
                return torch.zeros(shape)
            return torch.where(torch.as_tensor(mask, dtype=torch.bool), 0.0, FORBIDDEN)

        # Persistent: a checkpoint keeps the constraints it was trained with.
        self.register_buffer("transition_penalty", penalty(allowed, (num_tags, num_tags)))
        self.register_buffer("start_penalty", penalty(allowed_start, (num_tags,)))
        self.register_buffer("end_penalty", penalty(allowed_end, (num_tags,)))

    def _scores(self):
        return (self.transitions + self.transition_penalty, self.start + self.start_penalty,
                self.end + self.end_penalty)

    def log_likelihood(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log P(tags | emissions) per sentence (B,); emissions (B, L, T) float, tags (B, L), mask (B, L) bool."""
        emissions = emissions.float()
        return self._gold_score(emissions, tags, mask) - self.log_partition(emissions, mask)

    def _gold_score(self, emissions, tags, mask):
        transitions, start, end = self._scores()
        maskf = mask.float()
        emitted = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)
        score = start[tags[:, 0]] + (emitted * maskf).sum(1)
        score = score + (transitions[tags[:, :-1], tags[:, 1:]] * maskf[:, 1:]).sum(1)
        last = tags.gather(1, (mask.sum(1) - 1).unsqueeze(1)).squeeze(1)
        return score + end[last]

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        transitions, start, end = self._scores()
        alpha = start + emissions[:, 0]  # (B, T)
        for t in range(1, emissions.shape[1]):
            step = torch.logsumexp(alpha.unsqueeze(2) + transitions + emissions[:, t].unsqueeze(1), dim=1)
            alpha = torch.where(mask[:, t:t + 1], step, alpha)
        return torch.logsumexp(alpha + end, dim=1)

    @torch.no_grad()
    def decode(self, emissions: torch.Tensor, mask: torch.Tensor, n_best: int = 1) -> list[list[tuple[float, list]]]:
        """The n_best highest-scoring tag sequences of each sentence, best first, as (score, tags)."""
        transitions, start, end = self._scores()
        emissions = emissions.float()
        batch, length, tags = emissions.shape
        n = n_best
        # scores[b, j, r]: the r-th best score of a path ending in tag j at the current position.
        scores = torch.full((batch, tags, n), float("-inf"), device=emissions.device)
        scores[:, :, 0] = start + emissions[:, 0]
        pointers = []
        same = torch.arange(tags * n, device=emissions.device).view(1, tags, n).expand(batch, tags, n)
        for t in range(1, length):
            # Every (previous tag, rank) extended by every current tag: (B, T*n, T), keep the n best per tag.
            candidates = (scores.unsqueeze(3) + transitions.view(1, tags, 1, tags)).reshape(batch, tags * n, tags)
            best, index = candidates.topk(n, dim=1)  # (B, n, T)
            step = best.transpose(1, 2) + emissions[:, t].unsqueeze(2)  # (B, T, n)
            keep = mask[:, t].view(batch, 1, 1)
            scores = torch.where(keep, step, scores)
            # Past a sentence's end the pointer is the identity, so backtracking passes through unchanged.
            pointers.append(torch.where(keep, index.transpose(1, 2), same))
        final = (scores + end.view(1, tags, 1)).reshape(batch, tags * n)
        best, state = final.topk(min(n, tags * n), dim=1)  # (B, k) flat (tag, rank) indices
        path = [state // n]
        for pointer in reversed(pointers):  # backtrack all sentences and ranks at once
            state = pointer.reshape(batch, tags * n).gather(1, state)
            path.append(state // n)
        path = torch.stack(path[::-1], dim=2).tolist()  # (B, k, L)
        best, lengths = best.tolist(), mask.sum(1).tolist()
        return [[(score, tags_[: lengths[b]]) for score, tags_ in zip(best[b], path[b]) if score != float("-inf")]
                for b in range(batch)]
