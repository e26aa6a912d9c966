"""Resumable training state, written without pickles.

`accelerator.save_state` pickles the optimizer and the random-number generators (`optimizer.bin`,
`random_states_*.pkl`), and loading those runs whatever code the pickle names. A run directory is often
copied between machines and people, so a training checkpoint follows the same rule as a model checkpoint:
tensors in safetensors, everything else in JSON.

A checkpoint directory holds
- `model.safetensors`: the weights (tied weights stored once, as `save_pretrained` does);
- `optimizer.safetensors` + `optimizer.json`: each per-parameter state tensor under `state.<id>.<name>`,
  the rest of `optimizer.state_dict()` (hyper-parameters, scalar state) as JSON;
- `rng_<process>.safetensors`: that process's torch CPU and CUDA generator states as tensors, Python's and
  NumPy's global generators and the Accelerate step counter as JSON metadata;
- `scaler.json` when fp16 training has a loss scaler.
Every process holds the same model and optimizer (data parallel), so the main process writes those once.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from nlprnn.errors import NlprnnError
from nlprnn.hub import load_state_dict_checked, save_weights
from nlprnn.io import atomic_write_json

PICKLED_STATE = ("pytorch_model.bin", "optimizer.bin", "random_states_0.pkl")


def save_training_state(directory: Path, accelerator, model: torch.nn.Module, optimizer) -> None:
    """Write this process's part of the state into `directory` (every process calls it)."""
    directory = Path(directory)
    if accelerator.is_main_process:
        save_weights(accelerator.unwrap_model(model), directory / "model.safetensors")
        tensors, meta = _split_optimizer_state(optimizer.state_dict())
        save_file(tensors, str(directory / "optimizer.safetensors"))
        atomic_write_json(directory / "optimizer.json", meta)
        if accelerator.scaler is not None:
            atomic_write_json(directory / "scaler.json", accelerator.scaler.state_dict())
    _save_rng(directory / f"rng_{accelerator.process_index}.safetensors", accelerator.step)


def load_training_state(directory: Path, accelerator, model: torch.nn.Module, optimizer) -> None:
    """Restore what `save_training_state` wrote; nothing here unpickles."""
    directory = Path(directory)
    if not (directory / "model.safetensors").exists() and any((directory / n).exists() for n in PICKLED_STATE):
        raise NlprnnError(f"{directory}: a checkpoint in Accelerate's pickled format (an older nlprnn); it is not "
                          "loaded because unpickling can run code. Start the run again in a new run.dir.")
    load_state_dict_checked(accelerator.unwrap_model(model), directory / "model.safetensors")
    meta = _read_json(directory / "optimizer.json")
    optimizer.load_state_dict(_join_optimizer_state(_load(directory / "optimizer.safetensors"), meta, optimizer))
    if accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(_read_json(directory / "scaler.json"))
    accelerator.step = _load_rng(directory / f"rng_{accelerator.process_index}.safetensors")


def _split_optimizer_state(state_dict: dict) -> tuple[dict, dict]:
    tensors, per_parameter = {}, {}
    for pid, entries in state_dict["state"].items():
        kept = {}
        for name, value in entries.items():
            if torch.is_tensor(value):
                key = f"state.{pid}.{name}"
                tensors[key] = value.detach().cpu().contiguous()
                kept[name] = {"tensor": key}
            else:
                kept[name] = {"value": value}
        per_parameter[str(pid)] = kept
    return tensors, {"state": per_parameter, "param_groups": state_dict["param_groups"]}


def _join_optimizer_state(tensors: dict, meta: dict, optimizer) -> dict:
    state = {
        int(pid): {name: tensors[entry["tensor"]] if "tensor" in entry else entry["value"]
                   for name, entry in entries.items()}
        for pid, entries in meta["state"].items()
    }
    if len(meta["param_groups"]) != len(optimizer.param_groups):
        raise NlprnnError(f"optimizer.json: {len(meta['param_groups'])} parameter groups, the optimizer has "
                          f"{len(optimizer.param_groups)}; the config changed since the checkpoint was written")
    # JSON has no tuples; give back the type the optimizer uses (e.g. Adam's betas).
    groups = [{k: tuple(v) if isinstance(current.get(k), tuple) and isinstance(v, list) else v
               for k, v in saved.items()}
              for saved, current in zip(meta["param_groups"], optimizer.param_groups)]
    return {"state": state, "param_groups": groups}


def _save_rng(path: Path, accelerator_step: int) -> None:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    save_file(tensors, str(path), metadata={
        "python_random": json.dumps([version, list(internal), gauss]),
        "numpy_random": json.dumps([name, keys.tolist(), int(pos), int(has_gauss), float(cached)]),
        "accelerator_step": str(accelerator_step),
    })


def _load_rng(path: Path) -> int:
    tensors = _load(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = json.loads(meta["python_random"])
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json.loads(meta["numpy_random"])
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    return int(meta["accelerator_step"])


def _load(path: Path) -> dict:
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise NlprnnError(f"{path}: missing from the checkpoint (it was not written completely)") from None
    except (SafetensorError, OSError) as e:
        raise NlprnnError(f"{path}: not a valid safetensors file ({e})") from None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NlprnnError(f"{path}: missing from the checkpoint (it was not written completely)") from None
