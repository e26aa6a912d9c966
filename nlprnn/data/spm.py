"""Subword tokenizer: a thin wrapper over a SentencePiece (BPE or unigram) model.

The model is kept as its serialized protobuf bytes, which are what gets saved, hashed for
`fingerprint()` and shipped with checkpoints, so there is exactly one source of truth.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from google.protobuf.message import DecodeError
from sentencepiece import sentencepiece_model_pb2

from nlprnn.errors import NlprnnError, located
from nlprnn.io import atomic_write_bytes

MODEL_FILENAME = "spm.model"
MODEL_TYPES = ("bpe", "unigram")


class SentencePieceTokenizer:
    """Text <-> subword ids. Construct with `train` or `load`, not directly."""

    def __init__(self, model_proto: bytes, source: str = "<memory>"):
        _check_model_proto(model_proto, source)
        self._proto = bytes(model_proto)
        try:
            self._processor = spm.SentencePieceProcessor(model_proto=self._proto)
        except RuntimeError as error:
            raise located(source, None, f"SentencePiece rejected the model: {error}") from None
        self.source = source

    @classmethod
    def train(
        cls,
        lines: Iterable[str] | None = None,
        files: list[str | Path] | None = None,
        vocab_size: int = 8000,
        model_type: str = "bpe",
        character_coverage: float = 1.0,
        pad_id: int = 0,
        unk_id: int = 1,
        bos_id: int = 2,
        eos_id: int = 3,
        seed: int = 0,
        **trainer_options,
    ) -> SentencePieceTokenizer:
        """Train on `lines` (any iterable, streamed) or on text `files`; returns the tokenizer.

        Extra keyword arguments go to SentencePieceTrainer unchanged (e.g. `max_sentence_length`).
        Pass -1 for an id to leave that special token out.
        """
        if (lines is None) == (files is None):
            raise NlprnnError("SentencePieceTokenizer.train needs exactly one of lines= or files=")
        if model_type not in MODEL_TYPES:
            raise NlprnnError(f"model_type {model_type!r} is not supported; expected one of {MODEL_TYPES}")
        if lines is not None:
            source = "lines"
            inputs = {"sentence_iterator": iter(lines)}
        else:
            for file in files:
                if not Path(file).is_file():
                    raise located(
                        file,
                        None,
                        "SentencePiece training file not found; expected a text file with one sentence per line",
                    )
            source = ", ".join(str(f) for f in files)
            inputs = {"input": [str(f) for f in files]}
        # The trainer's only randomness (sentence sampling, unigram seeding) comes from this global seed.
        spm.set_random_generator_seed(seed)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                **inputs,
                model_writer=model,
                vocab_size=vocab_size,
                model_type=model_type,
                character_coverage=character_coverage,
                pad_id=pad_id,
                unk_id=unk_id,
                bos_id=bos_id,
                eos_id=eos_id,
                minloglevel=2,
                **trainer_options,
            )
        except RuntimeError as error:
            # The C++ trainer's messages are terse ("[!sentences_.empty()]"), so say what went in.
            raise NlprnnError(
                f"SentencePiece training on {source} failed (vocab_size={vocab_size}, model_type={model_type}): "
                f"{str(error).rstrip('.')}. Expected non-empty text with enough distinct characters/words for the vocab size"
            ) from None
        return cls(model.getvalue(), source=f"trained on {source}")

    @classmethod
    def load(cls, path: str | Path) -> SentencePieceTokenizer:
        """Load `spm.model`, given as the file itself or the directory that holds it."""
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILENAME
        try:
            proto = path.read_bytes()
        except FileNotFoundError:
            raise located(
                path,
                None,
                "SentencePiece model not found; expected an spm.model file or a folder containing one",
            ) from None
        except OSError as error:
            raise located(path, None, f"cannot read SentencePiece model: {error}") from None
        return cls(proto, source=str(path))

    def save(self, directory: str | Path) -> Path:
        """Write `<directory>/spm.model` atomically and return its path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / MODEL_FILENAME
        atomic_write_bytes(path, self._proto)
        return path

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text, out_type=int)

    def encode_pieces(self, text: str) -> list[str]:
        return self._processor.encode(text, out_type=str)

    def pieces(self) -> list[str]:
        """Every piece in id order (word-initial pieces start with U+2581)."""
        return [self._processor.id_to_piece(i) for i in range(len(self))]

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor.decode([int(i) for i in ids])

    def __len__(self) -> int:
        return self._processor.get_piece_size()

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(size={len(self)}, source={self.source!r})"

    # SentencePiece reports a disabled special as -1; None matches WordVocab and fails loudly if used as an index.
    @property
    def pad_id(self) -> int | None:
        return _optional_id(self._processor.pad_id())

    @property
    def unk_id(self) -> int | None:
        return _optional_id(self._processor.unk_id())

    @property
    def bos_id(self) -> int | None:
        return _optional_id(self._processor.bos_id())

    @property
    def eos_id(self) -> int | None:
        return _optional_id(self._processor.eos_id())

    @property
    def model_proto(self) -> bytes:
        return self._proto

    def fingerprint(self) -> str:
        return hashlib.sha256(self._proto).hexdigest()


def _optional_id(index: int) -> int | None:
    return None if index < 0 else index


def _check_model_proto(data: bytes, source: str) -> None:
    # SentencePieceProcessor happily "loads" an empty or unrelated protobuf and then returns garbage,
    # so parse it ourselves and insist on at least one piece.
    expected = (
        "expected a SentencePiece model (spm.model) written by SentencePieceTokenizer.save or spm_train"
    )
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(data)
    except DecodeError:
        raise located(
            source, None, f"not a SentencePiece model (protobuf does not parse); {expected}"
        ) from None
    if not proto.pieces:
        raise located(source, None, f"not a SentencePiece model (no pieces); {expected}")
