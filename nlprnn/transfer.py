"""Transfer learning: word vectors from text or binary files, and weights from a pretrained nlprnn language model.

Both align by word: a target word takes the vector of the same word in the source, else of its lower-cased
form (the first source word that lower-cases to it), else keeps its initialisation. The coverage (found exact,
found lower-cased, missing) is returned for the run record.

From a language model (`lstm`, `gru`, `rnn_*`, `lightrnn`, `transformer`) into a tagger or a translator:
the word embeddings are copied (a Light RNN word's vector is its row vector and column vector concatenated),
and the recurrent layers wherever a target tensor has exactly the shape of the source one (the forward
direction of a bidirectional encoder takes the LM's layer). Everything copied and everything skipped is
listed in the report, with the reason.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from nlprnn.errors import NlprnnError, located

# Vocabulary specials: never aligned to a source vector, never added to a vocabulary as source words.
SPECIAL_TOKENS = ("<pad>", "<unk>", "<eos>", "<s>", "</s>")

# ------------------------------------------------------------------------------------------------
# Word-vector files


def read_word_vectors(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(words, float32 vectors (N, D)) of a GloVe / word2vec / fastText text file, or a word2vec binary (.bin)."""
    path = Path(path)
    if not path.is_file():
        raise located(path, None, "word-vector file not found")
    with open(path, "rb") as f:
        head = f.read(4096)
    if path.suffix == ".bin" or b"\0" in head:
        return _read_word2vec_binary(path)
    return _read_text_vectors(path)


def _read_text_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    words, rows, width = [], [], None
    with open(path, encoding="utf-8", errors="strict") as f:
        for number, line in enumerate(f, start=1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                width = int(parts[1])  # word2vec / fastText header: count and dimension
                continue
            if len(parts) < 2:
                continue  # a blank line
            if width is None:
                width = len(parts) - 1
            if len(parts) - 1 != width:
                raise located(path, number, f"{len(parts) - 1} numbers after the word, expected {width} like the "
                                            "first vector (word-vector text format: a word, then its numbers)")
            try:
                rows.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError:
                raise located(path, number, "a vector entry is not a number") from None
            words.append(parts[0])
    if not words:
        raise located(path, None, "no vectors; expected lines of a word followed by its numbers")
    return words, np.stack(rows)


def _read_word2vec_binary(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, "rb") as f:
        header = f.readline().split()
        if len(header) != 2:
            raise located(path, 1, "word2vec binary: expected a header line '<count> <dimension>'")
        count, width = int(header[0]), int(header[1])
        words, vectors = [], np.empty((count, width), dtype=np.float32)
        for i in range(count):
            word = bytearray()
            while (byte := f.read(1)) != b" ":
                if not byte:
                    raise located(path, None, f"word2vec binary: file ends inside vector {i + 1} of {count}")
                if byte != b"\n":
                    word += byte
            data = f.read(4 * width)
            if len(data) != 4 * width:
                raise located(path, None, f"word2vec binary: file ends inside vector {i + 1} of {count}")
            vectors[i] = np.frombuffer(data, dtype="<f4")
            words.append(word.decode("utf-8", errors="replace"))
    return words, vectors


def align_vectors(target_words: list[str], source_words: list[str], source: torch.Tensor,
                  weight: torch.Tensor, skip: tuple[str, ...] = (), normalise: Callable[[str], str] | None = None,
                  match_scale: bool = False) -> dict:
    """Copy source rows into `weight` (target vocabulary x dim) by word, with a case-insensitive fallback.

    `normalise` is how the target built its vocabulary (e.g. digits to zero): source words go through it too,
    or a tagger's 0000 would never meet the LM's 1996. Where several source words become one, the first
    (in a frequency-sorted vocabulary, the most frequent) gives the vector.

    `match_scale` multiplies every copied vector by one factor, so that they have the spread (std) of the
    target's random initialisation: a Light RNN row+column vector is ~7x the size of a fresh tagger embedding,
    and a copied word should not dwarf the words left random. One factor keeps the vectors' geometry (angles,
    relative norms), unlike normalising each vector to unit length.
    """
    if source.shape[1] != weight.shape[1]:
        raise NlprnnError(f"word vectors have {source.shape[1]} dimensions, the model's embedding "
                          f"{weight.shape[1]}; set the embedding size to {source.shape[1]}")
    if normalise is not None:
        source_words = [normalise(w) for w in source_words]
    exact = {w: i for i, w in reversed(list(enumerate(source_words)))}  # first occurrence wins
    lowered: dict[str, int] = {}
    for i, w in enumerate(source_words):
        lowered.setdefault(w.lower(), i)
    found_exact = found_lower = 0
    rows, sources = [], []
    for row, word in enumerate(target_words):
        if word in skip:
            continue
        if word in exact:
            found_exact += 1
            rows.append(row)
            sources.append(exact[word])
        elif word.lower() in lowered:
            found_lower += 1
            rows.append(row)
            sources.append(lowered[word.lower()])
    scale = 1.0
    with torch.no_grad():
        if rows:
            copied = source[torch.tensor(sources)].to(weight.dtype)
            if match_scale and len(rows) > 1 and copied.std() > 0:
                scale = (weight.std() / copied.std()).item()
            weight[torch.tensor(rows)] = copied * scale
    total = len(target_words) - sum(w in skip for w in target_words)
    return {"total": total, "exact": found_exact, "lowercase": found_lower,
            "missing": total - found_exact - found_lower,
            "coverage": (found_exact + found_lower) / total if total else 0.0,
            **({"scale": scale} if match_scale else {})}


# ------------------------------------------------------------------------------------------------
# From a pretrained language model


def lm_word_vectors(model: nn.Module) -> torch.Tensor:
    """One vector per vocabulary word of a language model (V, D)."""
    if model.model_name == "lightrnn":
        table = model.table
        return torch.cat([model.row_embedding.weight[table.word_row], model.col_embedding.weight[table.word_col]], 1)
    for name in ("embedding", "token_embedding", "embed"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Embedding):
            return module.weight
    raise NlprnnError(f"cannot find the word embeddings of a {model.model_name} model")


def target_embedding(model: nn.Module) -> nn.Embedding:
    for name in ("embedding", "src_embedding"):
        module = getattr(model, name, None)
        if isinstance(module, nn.Embedding):
            return module
    raise NlprnnError(f"a {getattr(model, 'model_name', type(model).__name__)} model has no word embedding to "
                      "initialise")


def copy_recurrent_layers(source: nn.Module, target: nn.Module) -> tuple[list[str], list[str]]:
    """Copy the source's recurrent tensors into same-named, same-shaped target ones (forward directions)."""
    source_rnn = getattr(source, "rnn", None)
    target_rnn = getattr(target, "rnn", None) or getattr(target, "encoder", None)
    copied, skipped = [], []
    if not isinstance(source_rnn, nn.RNNBase) or not isinstance(target_rnn, nn.RNNBase):
        return copied, ["recurrent layers: the source or the target has none (nothing to copy)"]
    if source_rnn.mode != target_rnn.mode:
        return copied, [f"recurrent layers: {source_rnn.mode} into {target_rnn.mode} (different cells)"]
    targets = dict(target_rnn.named_parameters())
    with torch.no_grad():
        for name, tensor in source_rnn.named_parameters():
            if name not in targets:
                skipped.append(f"rnn.{name}: the target has no such layer")
            elif targets[name].shape != tensor.shape:
                skipped.append(f"rnn.{name}: shape {tuple(tensor.shape)} into {tuple(targets[name].shape)}")
            else:
                targets[name].copy_(tensor)
                copied.append(f"rnn.{name}")
    return copied, skipped


def source_words(init_from: str | None, word_vectors: str | None) -> list[str]:
    """The words of a transfer source (LM vocabulary, then vectors file), without reading the LM's weights."""
    from nlprnn.data.vocab import WordVocab
    from nlprnn.hub import resolve_checkpoint

    words: list[str] = []
    if init_from:
        directory = resolve_checkpoint(init_from)
        if not (directory / "vocab.json").is_file():
            raise NlprnnError(f"{directory}: a transfer source needs its vocab.json (a word-level language model)")
        words += WordVocab.load(directory / "vocab.json").itos
    if word_vectors:
        words += read_word_vectors(word_vectors)[0]
    return words


def transfer_from_checkpoint(directory: str, model: nn.Module, target_words: list[str],
                             normalise: Callable[[str], str] | None = None, match_scale: bool = False) -> dict:
    """Initialise `model` from a pretrained LM checkpoint; returns the report (what was copied and skipped).

    `normalise`, `match_scale`: see `align_vectors`."""
    from nlprnn.hub import from_pretrained

    source, source_vocab = from_pretrained(directory)
    if source_vocab is None:
        raise NlprnnError(f"{directory}: a transfer source needs its vocab.json (a word-level language model)")
    vectors = lm_word_vectors(source).detach()
    embedding = target_embedding(model)
    report: dict = {"source": str(directory), "source_model": source.model_name, "copied": [], "skipped": []}
    if vectors.shape[1] == embedding.weight.shape[1]:
        specials = tuple(w for w in SPECIAL_TOKENS if w in target_words)
        report["embedding_coverage"] = align_vectors(target_words, source_vocab.itos, vectors, embedding.weight,
                                                     skip=specials, normalise=normalise, match_scale=match_scale)
        report["copied"].append(f"{_name_of(model, embedding)} <- word embeddings ({vectors.shape[1]} dims)")
    else:
        report["skipped"].append(f"word embeddings: {vectors.shape[1]} dims into {embedding.weight.shape[1]}; set "
                                 f"model.embedding_size={vectors.shape[1]}")
    copied, skipped = copy_recurrent_layers(source, model)
    report["copied"] += copied
    report["skipped"] += skipped
    report["pretrained_parameters"] = [_name_of(model, embedding) + ".weight"] * bool(report.get(
        "embedding_coverage")) + [_param_name(model, c) for c in copied]
    return report


def _name_of(model: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is module)


def _param_name(model: nn.Module, copied: str) -> str:
    """'rnn.weight_hh_l0' in the report -> the model's own parameter name."""
    rnn = getattr(model, "rnn", None) or getattr(model, "encoder", None)
    return f"{_name_of(model, rnn)}.{copied.split('.', 1)[1]}"
