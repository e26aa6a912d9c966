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
from safetensors.torch import load_file, save_file

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
        save_weights(model, tmp / "model.safetensors")
        if vocab is not None:
            vocab.save(tmp / "vocab.json")
        for role, tokenizer in tokenizers.items():
            atomic_write_bytes(tmp / files[role], tokenizer.model_proto)
        atomic_write_json(tmp / "config.json", config)
    return directory


def save_weights(model: torch.nn.Module, path: str | Path) -> None:
    """The model's state dict as safetensors: tied weights once, every tensor in a storage of its own.

    safetensors refuses a tensor that is a view into a larger storage. On CUDA, cuDNN packs all of an RNN's
    weights into one flat buffer (flatten_parameters), so each LSTM/GRU weight is such a view and
    `safetensors.torch.save_model` fails on a GPU-trained model; those views are copied out here. A tied weight
    (one Parameter under two names) is written once, under the first name in sorted order, as save_model
    did; loading restores the tie.
    """
    params = dict(model.named_parameters(remove_duplicate=False))
    kept: dict[int, str] = {}
    tensors = {}
    for name, tensor in sorted(model.state_dict().items()):
        if name in params and kept.setdefault(id(params[name]), name) != name:
            continue  # an alias of a tied weight already kept
        tensor = tensor.detach()
        whole_storage = tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
        if not whole_storage or tensor.storage_offset() or not tensor.is_contiguous():
            tensor = tensor.clone(memory_format=torch.contiguous_format)
        tensors[name] = tensor
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_tokenizers(directory: str | Path) -> dict:
    """The SentencePiece tokenizers of a checkpoint, by role, each checked against its recorded fingerprint."""
    from nlprnn.data.spm import SentencePieceTokenizer

    directory = resolve_checkpoint(directory)
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
    directory = resolve_checkpoint(directory)
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


def load_state_dict_checked(model: torch.nn.Module, path: Path, strict: bool = True) -> dict:
    """Load safetensors weights into `model`, naming every missing, unexpected or mis-shaped tensor.

    With strict=False the tensors that fit are loaded and the rest reported: {"missing", "unexpected",
    "shape_mismatch"} name lists (what stays at its initial value, what was ignored).
    """
    try:
        tensors = load_file(str(path))
    except FileNotFoundError:
        raise NlprnnError(f"{path}: missing model weights") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise NlprnnError(f"{path}: not a valid safetensors file ({e})") from None
    return load_tensors_checked(model, tensors, str(path), strict)


def load_tensors_checked(model: torch.nn.Module, tensors: dict, source: str, strict: bool = True) -> dict:
    expected = model.state_dict()
    # save_weights drops one name of each tied pair; the tie itself restores it.
    tied = {name for name in expected if name not in tensors and _is_tied_alias(model, name, tensors)}
    missing = sorted(set(expected) - set(tensors) - tied)
    unexpected = sorted(set(tensors) - set(expected))
    mismatched = sorted(
        f"{n} {tuple(tensors[n].shape)} vs model {tuple(expected[n].shape)}"
        for n in set(tensors) & set(expected) if tensors[n].shape != expected[n].shape
    )
    report = {"missing": missing, "unexpected": unexpected, "shape_mismatch": mismatched}
    if (missing or unexpected or mismatched) and strict:
        parts = [f"{label}: {', '.join(names)}" for label, names in
                 (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if names]
        raise NlprnnError(f"{source}: weights do not fit the model ({'; '.join(parts)}); load with strict=False "
                          "to keep what fits and report the rest")
    bad = {n.split(" ")[0] for n in mismatched}
    model.load_state_dict({k: v for k, v in tensors.items() if k in expected and k not in bad}, strict=False)
    return report


def import_legacy_state_dict(model: torch.nn.Module, path: str | Path, strict: bool = True) -> dict:
    """Load a PyTorch `.pt` state dict (from another toolkit, or an old run) without running its pickle code.

    `torch.load(weights_only=True)` only rebuilds tensors and plain containers; a file whose pickle would call
    anything else (the way a malicious checkpoint runs code) is refused before any of it runs.
    """
    import pickle

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NlprnnError(f"{path}: not found") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
        raise NlprnnError(f"{path}: refused: not a plain tensor state dict, or it asks to run code on load "
                          f"(weights_only loading stopped it: {str(e).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NlprnnError(f"{path}: expected a dict of tensor names to tensors (a state dict)")
    return load_tensors_checked(model, state, str(path), strict)


def _is_tied_alias(model: torch.nn.Module, name: str, tensors: dict) -> bool:
    params = dict(model.named_parameters(remove_duplicate=False))
    if name not in params:
        return False
    return any(other in tensors and p is params[name] for other, p in params.items() if other != name)


def resolve_checkpoint(name_or_dir: str | Path) -> Path:
    """A local checkpoint folder as is; otherwise a hub model id, fetched (or found in the cache, offline)."""
    directory = Path(name_or_dir)
    if directory.is_dir():
        return directory
    from nlprnn.data.corpora import looks_like_hub_id

    if directory.exists() or not looks_like_hub_id(str(name_or_dir)):
        raise NlprnnError(f"{name_or_dir}: not a checkpoint directory (config.json + model.safetensors) nor a hub model id")
    from huggingface_hub import snapshot_download

    try:
        # Safe files only: weights, JSON and tokenizer models; never pickles or code.
        return Path(snapshot_download(str(name_or_dir), allow_patterns=["*.json", "*.safetensors", "*.model",
                                                                        "README.md"]))
    except Exception as e:  # offline without a cached copy, unknown id, no access
        raise NlprnnError(f"hub model '{name_or_dir}': {type(e).__name__}: {str(e).splitlines()[0]}. Online, check "
                          "the id; offline (HF_HUB_OFFLINE=1), it must be in the hub cache") from None


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu", strict: bool = True):
    """Load `(model, vocab)` from a checkpoint folder written by `save_pretrained`, or a hub model id."""
    from nlprnn.models import build_model

    directory = resolve_checkpoint(directory)
    config = read_checkpoint_config(directory)
    try:
        model = build_model(config["model"], **config["config"])
    except NlprnnError as e:
        raise NlprnnError(f"{directory / 'config.json'}: {e}") from None
    model.load_report = load_state_dict_checked(model, directory / "model.safetensors", strict)
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


# ------------------------------------------------------------------------------------------------
# Model cards and the hub

_CARD_TASKS = {"lm": ("text-generation", "Language modelling"), "mt": ("translation", "Translation"),
               "ner": ("token-classification", "Named-entity recognition")}


def write_model_card(directory: str | Path, record: dict) -> Path:
    """`README.md` beside a checkpoint: hub `model-index` metadata from the run record, and how it was made."""
    import yaml

    task_type, task_name = _CARD_TASKS.get(record["task"], (record["task"], record["task"]))
    metrics = [{"type": name, "value": float(value), "name": name}
               for name, value in record["metrics"].items() if isinstance(value, (int, float))]
    meta = {"library_name": "nlprnn", "tags": ["nlprnn", record["model"], record["task"]],
            "model-index": [{"name": f"{record['model']}-{record['dataset']}".replace(" ", "-"), "results": [{
                "task": {"type": task_type, "name": task_name},
                "dataset": {"name": record["dataset"], "type": record["dataset"]},
                "metrics": metrics}]}]}
    shown = "\n".join(f"| {m['name']} | {m['value']:.4g} |" for m in metrics)
    text = (f"---\n{yaml.safe_dump(meta, sort_keys=False)}---\n\n# {record['model']} on {record['dataset']}\n\n"
            f"An nlprnn {task_name.lower()} model ({record['params']['total']:,} parameters), trained for "
            f"{record['train']['wall_seconds'] / 60:.1f} minutes on {record['hardware'].get('device', '?')} "
            f"({record['hardware'].get('num_processes', 1)} process(es)), seed {record['seed']}, "
            f"commit `{record['git_commit']}`.\n\n| metric | value |\n| --- | --- |\n{shown}\n\n"
            f"Trained with:\n\n```bash\n{record['command']}\n```\n\n"
            "Load it with `nlprnn.hub.from_pretrained(<folder or hub id>)`: safetensors and JSON only, nothing "
            "pickled.\n")
    path = Path(directory) / "README.md"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def push_to_hub(directory: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a checkpoint folder to the Hugging Face hub (needs network access and a token)."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    info = api.upload_folder(folder_path=str(directory), repo_id=repo_id,
                             allow_patterns=["*.json", "*.safetensors", "*.model", "README.md"])
    return str(info)
