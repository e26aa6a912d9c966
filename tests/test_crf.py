"""CRF: log-partition, likelihood, Viterbi and n-best Viterbi against brute-force enumeration; constraints."""

import itertools

import pytest
import torch

from nlprnn.data.tags import allowed_transition
from nlprnn.models.crf import CRF


def random_crf(tags=3, seed=0, constrained=False):
    torch.manual_seed(seed)
    if constrained:  # IOB2 over O, B-X, I-X
        names = ["O", "B-X", "I-X"]
        allowed = torch.tensor([[allowed_transition(a, b, "iob2") for b in names] for a in names])
        start = torch.tensor([allowed_transition("<s>", b, "iob2") for b in names])
        crf = CRF(3, allowed, start, None)
    else:
        crf = CRF(tags)
    with torch.no_grad():
        for p in crf.parameters():
            p.normal_()
    return crf


@torch.no_grad()
def brute_force(crf, emissions, length):
    transitions, start, end = crf._scores()
    scored = []
    for path in itertools.product(range(crf.num_tags), repeat=length):
        score = start[path[0]] + end[path[-1]] + sum(emissions[t, path[t]] for t in range(length))
        score = score + sum(transitions[path[t - 1], path[t]] for t in range(1, length))
        scored.append((float(score), list(path)))
    return scored


def batch(seed=1, lengths=(4, 2, 1, 3), tags=3):
    emissions = torch.randn(len(lengths), max(lengths), tags, generator=torch.Generator().manual_seed(seed))
    mask = torch.arange(max(lengths))[None] < torch.tensor(lengths)[:, None]
    return emissions, mask, lengths


@pytest.mark.parametrize("constrained", [False, True])
@torch.no_grad()
def test_log_partition_and_likelihood_equal_enumeration(constrained):
    crf = random_crf(constrained=constrained)
    emissions, mask, lengths = batch()
    log_z = crf.log_partition(emissions, mask)
    tags = torch.randint(0, 3, mask.shape, generator=torch.Generator().manual_seed(2))
    likelihood = crf.log_likelihood(emissions, tags, mask)
    for b, length in enumerate(lengths):
        scored = brute_force(crf, emissions[b], length)
        expected_z = torch.logsumexp(torch.tensor([s for s, _ in scored], dtype=torch.float64), 0)
        assert float(log_z[b]) == pytest.approx(float(expected_z), abs=1e-4)
        gold = dict((tuple(p), s) for s, p in scored)[tuple(tags[b, :length].tolist())]
        assert float(likelihood[b]) == pytest.approx(gold - float(expected_z), rel=1e-6, abs=1e-4)


@pytest.mark.parametrize("constrained", [False, True])
def test_viterbi_and_n_best_equal_enumeration(constrained):
    crf = random_crf(constrained=constrained)
    emissions, mask, lengths = batch(seed=3)
    decoded = crf.decode(emissions, mask, n_best=5)
    for b, length in enumerate(lengths):
        expected = sorted(brute_force(crf, emissions[b], length), key=lambda x: -x[0])[:5]
        assert [path for _, path in decoded[b]] == [path for _, path in expected]
        assert [s for s, _ in decoded[b]] == pytest.approx([s for s, _ in expected], abs=1e-4)
    assert [paths[0][1] for paths in crf.decode(emissions, mask)] == [d[0][1] for d in decoded]


def test_constraints_keep_invalid_sequences_out_of_viterbi():
    crf = random_crf(constrained=True)
    with torch.no_grad():
        crf.transitions[0, 2] = 50.0  # O -> I-X is what the learned scores like best
    emissions = torch.zeros(1, 4, 3)
    emissions[0, :, 2] = 5.0  # and the emissions say I-X everywhere
    (best,) = crf.decode(emissions, torch.ones(1, 4, dtype=torch.bool))[0]
    names = ["O", "B-X", "I-X"]
    path = ["<s>"] + [names[i] for i in best[1]]
    assert all(allowed_transition(a, b, "iob2") for a, b in zip(path, path[1:]))


def test_n_best_beyond_the_number_of_paths():
    crf = random_crf(tags=2)
    emissions, mask, _ = batch(lengths=(1,), tags=2)
    assert len(crf.decode(emissions, mask, n_best=5)[0]) == 2
