"""Tag schemes: spans, lossless conversion, strict validation, and CRF transition constraints that agree with it."""

import itertools
import random

import pytest

from nlprnn.data.tags import SCHEMES, allowed_transition, convert, spans, tags_from_spans
from nlprnn.errors import NlprnnError

CONLL_IOB1 = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "O", "I-ORG", "I-MISC"]
SPANS = [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5), ("ORG", 6, 7), ("MISC", 7, 8)]


def test_iob1_spans_and_conversions_by_hand():
    assert spans(CONLL_IOB1, "iob1") == SPANS
    assert convert(CONLL_IOB1, "iob1", "iob2") == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "O", "B-ORG", "B-MISC"]
    assert convert(CONLL_IOB1, "iob1", "bioes") == ["B-PER", "E-PER", "O", "S-LOC", "S-LOC", "O", "S-ORG", "S-MISC"]
    assert convert(convert(CONLL_IOB1, "iob1", "bioes"), "bioes", "iob1") == CONLL_IOB1


def random_spans(rng, length, types=("PER", "LOC")):
    entities, i = [], 0
    while i < length:
        if rng.random() < 0.5:
            end = min(length, i + rng.randint(1, 3))
            entities.append((rng.choice(types), i, end))
            i = end
        else:
            i += 1
    return entities


@pytest.mark.parametrize("scheme", SCHEMES)
def test_every_scheme_round_trips_through_spans(scheme):
    rng = random.Random(0)
    for _ in range(300):
        length = rng.randint(0, 10)
        entities = random_spans(rng, length)
        tags = tags_from_spans(entities, length, scheme)
        assert spans(tags, scheme, strict=True) == entities
        for other in SCHEMES:
            assert convert(convert(tags, scheme, other), other, scheme) == tags


@pytest.mark.parametrize("tags, scheme, message", [
    (["O", "I-PER"], "iob2", "continues an entity of type PER"),
    (["B-PER", "I-LOC"], "iob2", "continues an entity of type LOC"),
    (["B-PER", "O"], "iob1", "does not follow one of the same type"),
    (["B-PER", "O"], "bioes", "without its E- tag"),
    (["E-PER"], "bioes", "continues an entity of type PER"),
    (["S-PER"], "iob2", "not valid in IOB2"),
    (["X-PER"], "iob2", "expected O or a prefix"),
])
def test_strict_mode_names_the_bad_tag(tags, scheme, message):
    with pytest.raises(NlprnnError, match=message):
        spans(tags, scheme, strict=True)


def test_lenient_reading_follows_conlleval():
    assert spans(["O", "I-PER", "I-PER"], "iob2") == [("PER", 1, 3)]
    assert spans(["B-PER", "I-LOC"], "iob2") == [("PER", 0, 1), ("LOC", 1, 2)]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_transition_constraints_accept_exactly_the_strictly_valid_sequences(scheme):
    prefixes = {"iob1": "BI", "iob2": "BI", "bioes": "BIES"}[scheme]
    tag_set = ["O"] + [f"{p}-{t}" for p in prefixes for t in ("PER", "LOC")]
    for length in range(1, 5):
        for tags in itertools.product(tag_set, repeat=length):
            path = ["<s>", *tags, "</s>"]
            allowed = all(allowed_transition(a, b, scheme) for a, b in zip(path, path[1:]))
            try:
                spans(list(tags), scheme, strict=True)
                valid = True
            except NlprnnError:
                valid = False
            assert allowed == valid, (scheme, tags)
