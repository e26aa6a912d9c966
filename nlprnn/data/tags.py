"""Tag schemes for sequence labelling: IOB1, IOB2 (BIO) and BIOES, converted losslessly through entity spans.

- IOB1 (CoNLL-2003 as distributed): I-X marks a token inside an entity; B-X only starts an entity that
  directly follows another entity of the same type X.
- IOB2 / BIO: every entity starts with B-X, its other tokens are I-X.
- BIOES: S-X is a one-token entity; longer ones are B-X I-X ... E-X.

Every scheme maps to the same spans (type, start, end exclusive), so conversion goes tags -> spans -> tags.
Reading is lenient by default the way conlleval is (an I-X after O or another type starts an entity);
`strict=True` rejects any sequence the scheme does not allow, naming the position.
"""

from __future__ import annotations

from collections.abc import Sequence

from nlprnn.errors import NlprnnError

SCHEMES = ("iob1", "iob2", "bioes")
Span = tuple[str, int, int]  # (type, start, end) with end exclusive


def split_tag(tag: str) -> tuple[str, str | None]:
    """("B", "PER") for "B-PER", ("O", None) for "O"."""
    if tag == "O":
        return "O", None
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not kind:
        raise NlprnnError(f"tag {tag!r}: expected O or a prefix B-, I-, E-, S- followed by a type (e.g. B-PER)")
    return prefix, kind


def _check_prefixes(tags: Sequence[str], scheme: str) -> None:
    allowed = {"iob1": "BI", "iob2": "BI", "bioes": "BIES"}[scheme]
    for position, tag in enumerate(tags):
        prefix, _ = split_tag(tag)
        if prefix != "O" and prefix not in allowed:
            raise NlprnnError(f"tag {tag!r} at position {position + 1} is not valid in {scheme.upper()} "
                              f"(prefixes {', '.join(allowed)} and O)")


def spans(tags: Sequence[str], scheme: str, strict: bool = False) -> list[Span]:
    """The entities of a tag sequence. Raises NlprnnError on an invalid sequence when `strict`."""
    if scheme not in SCHEMES:
        raise NlprnnError(f"tag scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    _check_prefixes(tags, scheme)
    result: list[Span] = []
    kind, start = None, 0  # the open entity, if any

    def close(end: int) -> None:
        nonlocal kind
        if kind is not None:
            result.append((kind, start, end))
            kind = None

    def invalid(position: int, why: str) -> None:
        if strict:
            raise NlprnnError(f"tag {tags[position]!r} at position {position + 1} {why} ({scheme.upper()}, strict)")

    for i, tag in enumerate(tags):
        prefix, label = split_tag(tag)
        if prefix == "O":
            if scheme == "bioes" and kind is not None:
                invalid(i - 1, "leaves an entity without its E- tag")
            close(i)
        elif prefix == "B":
            if scheme == "iob1" and not (kind == label and i > 0):
                invalid(i, "starts an entity that does not follow one of the same type")
            if scheme == "bioes" and kind is not None:
                invalid(i - 1, "leaves an entity without its E- tag")
            close(i)
            kind, start = label, i
        elif prefix == "S":
            if kind is not None:
                invalid(i - 1, "leaves an entity without its E- tag")
            close(i)
            result.append((label, i, i + 1))
        else:  # I or E: continue the open entity of this type, else (leniently) start one
            if kind != label:
                if scheme != "iob1":
                    invalid(i, f"continues an entity of type {label} that was not started")
                close(i)
                kind, start = label, i
            if prefix == "E":
                close(i + 1)
    if scheme == "bioes" and kind is not None:
        invalid(len(tags) - 1, "leaves an entity without its E- tag")
    close(len(tags))
    return result


def tags_from_spans(entities: Sequence[Span], length: int, scheme: str) -> list[str]:
    """The tag sequence of `length` tokens that marks exactly `entities` (non-overlapping) in `scheme`."""
    tags = ["O"] * length
    previous_end, previous_kind = -1, None
    for kind, start, end in sorted(entities, key=lambda s: s[1]):
        if scheme == "iob2":
            tags[start:end] = [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        elif scheme == "bioes":
            tags[start:end] = [f"S-{kind}"] if end - start == 1 else (
                [f"B-{kind}"] + [f"I-{kind}"] * (end - start - 2) + [f"E-{kind}"])
        else:  # iob1: B- only where an entity touches a previous one of the same type
            first = "B" if (start == previous_end and kind == previous_kind) else "I"
            tags[start:end] = [f"{first}-{kind}"] + [f"I-{kind}"] * (end - start - 1)
        previous_end, previous_kind = end, kind
    return tags


def convert(tags: Sequence[str], source: str, target: str) -> list[str]:
    """`tags` read in scheme `source` (leniently) and written in scheme `target`."""
    if target not in SCHEMES:
        raise NlprnnError(f"tag scheme {target!r}: expected one of {', '.join(SCHEMES)}")
    return tags_from_spans(spans(tags, source), len(tags), target)


def allowed_transition(previous: str, current: str, scheme: str) -> bool:
    """Whether tag `current` may follow tag `previous` in a valid sequence of `scheme` ("<s>" / "</s>" mark the
    start and end of a sentence). Used to constrain the CRF."""
    if current == "</s>":
        if previous == "<s>":
            return True
        prefix, _ = split_tag(previous)
        return scheme != "bioes" or prefix in ("O", "E", "S")
    prefix, kind = split_tag(current)
    if previous == "<s>":
        previous_prefix, previous_kind = "O", None
    else:
        previous_prefix, previous_kind = split_tag(previous)
    open_entity = previous_prefix in ("B", "I")
    if scheme == "bioes":
        if prefix in ("I", "E"):
            return previous_prefix in ("B", "I") and previous_kind == kind
        return previous_prefix in ("O", "E", "S")  # O, B, S start fresh: the previous entity must be closed
    if scheme == "iob2":
        return prefix != "I" or (open_entity and previous_kind == kind)
    # iob1: B-X only right after an entity of type X; I-X anywhere (it starts or continues an entity)
    return prefix != "B" or (open_entity and previous_kind == kind)
