"""Column-format sequence-labelling data (CoNLL-2003 and the like): one token per line, a blank line ends a
sentence, `-DOCSTART-` lines are skipped.

Columns are separated by spaces or tabs; `token_column` and `tag_column` choose which hold the word and the
tag (negative counts from the end: CoNLL-2003's four columns `word POS chunk NER` use 0 and -1, a two-column
`word<TAB>tag` file the same). Every line must have as many columns as the first one. Tags are checked against
the declared scheme (`nlprnn.data.tags`); every error names the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass

from nlprnn.data.corpora import FileSplit, looks_like_hub_id
from nlprnn.data.tags import spans, split_tag
from nlprnn.errors import NlprnnError, located


@dataclass
class TaggedSentence:
    tokens: list[str]
    tags: list[str]
    line: int  # where the sentence starts, for error messages


def read_conll(split: FileSplit, token_column: int = 0, tag_column: int = -1, scheme: str = "iob1",
               strict: bool = False) -> list[TaggedSentence]:
    sentences: list[TaggedSentence] = []
    tokens, tags, start, width, width_line = [], [], 0, None, 0

    def finish() -> None:
        nonlocal tokens, tags
        if tokens:
            try:
                spans(tags, scheme, strict=strict)
            except NlprnnError as error:
                raise located(split.location, start, f"sentence starting here: {error}") from None
            sentences.append(TaggedSentence(tokens, tags, start))
        tokens, tags = [], []

    for number, line in split.iter_lines():
        columns = line.split()
        if not columns:
            finish()
            continue
        if columns[0] == "-DOCSTART-":
            finish()
            continue
        if width is None:
            width, width_line = len(columns), number
            for name, index in (("token", token_column), ("tag", tag_column)):
                if not -width <= index < width:
                    raise located(split.location, number, f"data.{name}_column={index}, but the line has {width} "
                                                          f"column(s)")
        elif len(columns) != width:
            raise located(split.location, number, f"{len(columns)} column(s), expected {width} like line {width_line} "
                                                  f"(columns are separated by spaces or tabs)")
        try:
            split_tag(columns[tag_column])
        except NlprnnError as error:
            raise located(split.location, number, str(error)) from None
        if not tokens:
            start = number
        tokens.append(columns[token_column])
        tags.append(columns[tag_column])
    finish()
    if not sentences:
        raise located(split.location, None, "no sentences; expected one token per line with its tag, a blank line "
                                            "between sentences")
    return sentences


def resolve_tagging_corpus(path: str, splits=("train", "valid", "test")) -> dict[str, FileSplit]:
    """A local folder with `<split>.txt` column files. (Hub datasets such as `conll2003` store tags as class
    ids with their names in the dataset features: see `hub_sentences`.)"""
    from pathlib import Path

    folder = Path(path)
    if not folder.is_dir():
        kind = "a hub dataset id (use hub_sentences)" if looks_like_hub_id(str(path)) else "a folder"
        raise NlprnnError(f"'{path}' is not a folder with {'/'.join(s + '.txt' for s in splits)}; it looks like {kind}")
    result = {}
    for split in splits:
        file = folder / f"{split}.txt"
        if not file.is_file() or file.stat().st_size == 0:
            raise located(file, None, "missing or empty; expected a CoNLL column file")
        result[split] = FileSplit(split, file)
    return result


def hub_sentences(dataset_id: str, split: str, name: str | None = None, tokens_column: str = "tokens",
                  tags_column: str = "ner_tags") -> list[TaggedSentence]:
    """Sentences of a hub dataset whose rows hold a token list and a list of tag ids (named in its features)."""
    import datasets

    hub_split = "validation" if split == "valid" else split
    try:
        rows = datasets.load_dataset(dataset_id, name, split=hub_split)
    except Exception as error:  # offline, unknown id or split: the user's to fix
        raise NlprnnError(f"hub dataset '{dataset_id}': loading split {hub_split!r} failed: {error}") from None
    names = rows.features[tags_column].feature.names
    return [TaggedSentence(list(row[tokens_column]), [names[i] for i in row[tags_column]], index + 1)
            for index, row in enumerate(rows) if row[tokens_column]]
