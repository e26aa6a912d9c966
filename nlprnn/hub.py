"""Self-describing checkpoints: `save_pretrained(dir)` and `from_pretrained(dir)`.

A checkpoint directory holds `config.json` (model name, its config, tokenizer fingerprint),
`model.safetensors` and the tokenizer files (`vocab.json` and/or `spm.model`). Nothing is pickled, so
loading an untrusted checkpoint cannot run code: safetensors holds only tensors and JSON holds only data.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_model

from nlprnn.data.vocab import WordVocab
from nlprnn.errors import NlprnnError
from nlprnn.io import atomic_directory, atomic_write_bytes, atomic_write_json

FORMAT = "nlprnn.checkpoint"
FORMAT_VERSION = 1


def save_pretrained(model: torch.nn.Module, directory: str | Path, vocab: WordVocab | None = None,
                    extra: dict | None = None, tokenizers: dict | None = None) -> Path:
    """Write a checkpoint atomically: a crash leaves the previous checkpoint (if any) intact.

    `tokenizers` maps a role ("src", "tgt") to a SentencePieceTokenizer; one shared by several roles (a joint
    vocabulary) is written once, as spm.model, separate ones as spm.<role>.model.
    """
    directory = Path(directory)
    tokenizers = tokenizers or {}
    shared = len({t.fingerprint() for t in tokenizers.values()}) == 1
    files = {role: "spm.model" if shared else f"spm.{role}.model" for role in tokenizers}
    config = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "model": model.model_name,
        "config": dataclasses.asdict(model.config),
        "vocab_fingerprint": vocab.fingerprint() if vocab is not None else None,
        **({"tokenizers": {role: {"file": files[role], "fingerprint": t.fingerprint()}
                           for role, t in tokenizers.items()}} if tokenizers else {}),
        **(extra or {}),
    }
    with atomic_directory(directory) as tmp:
        save_model(model, str(tmp / "model.safetensors"))  # handles tied weights (shared storage)
        if vocab is not None:
            vocab.save(tmp / "vocab.json")
        for role, tokenizer in tokenizers.items():
            atomic_write_bytes(tmp / files[role], tokenizer.model_proto)
        atomic_write_json(tmp / "config.json", config)
    return directory


def load_tokenizers(directory: str | Path) -> dict:
    """The SentencePiece tokenizers of a checkpoint, by role, each checked against its recorded fingerprint."""
    from nlprnn.data.spm import SentencePieceTokenizer

    directory = Path(directory)
    config = read_checkpoint_config(directory)
    tokenizers = {}
    for role, entry in (config.get("tokenizers") or {}).items():
        path = directory / Path(entry["file"]).name  # a name only: a config cannot point outside the folder
        tokenizer = SentencePieceTokenizer.load(path)
        if tokenizer.fingerprint() != entry["fingerprint"]:
            raise NlprnnError(f"{path}: does not match the {role} tokenizer the model was trained with "
                              "(fingerprint differs from config.json)")
        tokenizers[role] = tokenizer
    return tokenizers


def read_checkpoint_config(directory: str | Path) -> dict:
    directory = Path(directory)
    path = directory / "config.json"
    if not directory.is_dir():
        raise NlprnnError(f"{directory}: not a checkpoint directory (expected config.json + model.safetensors)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NlprnnError(f"{path}: missing; a checkpoint directory holds config.json + model.safetensors") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NlprnnError(f"{path}: not a JSON checkpoint config ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise NlprnnError(f"{path}: not an nlprnn checkpoint config (expected \"format\": \"{FORMAT}\")")
    if config.get("version", 0) > FORMAT_VERSION:
        raise NlprnnError(f"{path}: written by a newer nlprnn (format version {config['version']})")
    return config


def load_state_dict_checked(model: torch.nn.Module, path: Path) -> None:
    """Load safetensors weights into `model`, naming every missing, unexpected or mis-shaped tensor."""
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise NlprnnError(f"{path}: missing model weights") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise NlprnnError(f"{path}: not a valid safetensors file ({e})") from None
    expected = model.state_dict()
    # save_model drops one name of each tied pair; the tie itself restores it.
    tied = {name for name in expected if name not in tensors and _is_tied_alias(model, name, tensors)}
    missing = sorted(set(expected) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(
        f"{n} {tuple(tensors[n].shape)} vs model {tuple(expected[n].shape)}"
        for n in set(tensors) & set(expected) if tensors[n].shape != expected[n].shape
    )
    if missing or unexpected or mismatched:
        parts = [f"{label}: {', '.join(names)}" for label, names in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if names]
        raise NlprnnError(f"{path}: weights do not fit the model in config.json ({'; '.join(parts)})")
    model.load_state_dict(tensors, strict=False)


def _is_tied_alias(model: torch.nn.Module, name: str, tensors: dict) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return False
    return any(other in tensors and p is params[name] for other, p in params.items() if other != name)


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu"):
    """Load `(model, vocab)` from a checkpoint directory written by `save_pretrained`."""
    from nlprnn.models import build_model

    directory = Path(directory)
    config = read_checkpoint_config(directory)
    try:
        model = build_model(config["model"], **config["config"])
    except NlprnnError as e:
        raise NlprnnError(f"{directory / 'config.json'}: {e}") from None
    load_state_dict_checked(model, directory / "model.safetensors")
    vocab = None
    if (directory / "vocab.json").exists():
        vocab = WordVocab.load(directory / "vocab.json")
        if config.get("vocab_fingerprint") and vocab.fingerprint() != config["vocab_fingerprint"]:
            raise NlprnnError(f"{directory / 'vocab.json'}: does not match the vocabulary the model was trained "
                              "with (fingerprint differs from config.json)")
        size = config["config"].get("vocab_size")
        if size and len(vocab) != size:
            raise NlprnnError(f"{directory / 'vocab.json'}: {len(vocab)} words, but the model expects {size}")
    return model.to(device).eval(), vocab
