"""config -> data -> model -> Trainer -> metrics -> result.json. Recipes and the CLI call `run_experiment`."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin, set_seed

from nlprnn.config import ExperimentConfig, dump_yaml, flatten
from nlprnn.hub import write_model_card
from nlprnn.io import atomic_write_text
from nlprnn.metrics import hardware, peak_memory_bytes
from nlprnn.models import build_model
from nlprnn.results import command_line, git_commit, write_record
from nlprnn.train.loop import Trainer
from nlprnn.train.reallocation import WordReallocation
from nlprnn.train.tasks import TASKS


def make_accelerator(cfg: ExperimentConfig) -> Accelerator:
    tracker = cfg.run.tracker
    if tracker == "auto":
        try:
            import tensorboard  # noqa: F401

            tracker = "tensorboard"
        except ImportError:
            tracker = "none"
    # Our batches are not a prepared DataLoader, so accumulation counts micro-steps across epoch ends.
    plugin = GradientAccumulationPlugin(num_steps=cfg.train.grad_accum_steps, sync_with_dataloader=False)
    # Accelerate only forms a gloo group on a GPU-less machine when told it runs on the CPU; without this,
    # `accelerate launch --multi_gpu --num_processes 2` there starts two unrelated single-process runs.
    multi_cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # The adaptive softmax skips tail clusters that no target of a batch falls into; DDP must expect that.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)] if cfg.model.get("head") == "adaptive" else []
    accelerator = Accelerator(gradient_accumulation_plugin=plugin, project_dir=cfg.run.dir, cpu=multi_cpu,
                              kwargs_handlers=handlers, log_with=None if tracker == "none" else tracker)
    cores = os.cpu_count() or 1
    if accelerator.device.type == "cpu" and torch.get_num_threads() * accelerator.num_processes < cores:
        accelerator.print(f"nlprnn: note: {accelerator.num_processes} process(es) x {torch.get_num_threads()} "
                          f"thread(s) on {cores} CPU cores; `accelerate launch` sets OMP_NUM_THREADS=1 unless "
                          f"given --num_cpu_threads_per_process {cores // accelerator.num_processes}")
    if tracker != "none":
        # Trackers take scalars only: lists and None become their text.
        flat = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(cfg.to_dict()).items()}
        accelerator.init_trackers("tensorboard", config=flat)
    return accelerator


def apply_transfer(model, cfg: ExperimentConfig, task) -> dict:
    """Initialise from transfer.init_from and/or transfer.word_vectors; the report for the run record.

    Every process does the same (deterministic) copy before training, so no broadcast is needed; a resumed run
    does it too and then loads its checkpoint over it.
    """
    from nlprnn.transfer import (
        SPECIAL_TOKENS,
        align_vectors,
        read_word_vectors,
        target_embedding,
        transfer_from_checkpoint,
    )

    t = cfg.transfer
    if not t.init_from and not t.word_vectors:
        return {}
    words = task.transfer_words()
    normalise = getattr(task, "normalise", None)  # source words are matched as the task spells its own
    report: dict = {}
    if t.init_from:
        report = transfer_from_checkpoint(t.init_from, model, words, normalise, t.vector_scale == "match")
    if t.word_vectors:
        source_words, vectors = read_word_vectors(t.word_vectors)
        embedding = target_embedding(model)
        specials = tuple(w for w in SPECIAL_TOKENS if w in words)
        report["word_vectors"] = {"file": t.word_vectors, "vectors": len(source_words),
                                  **align_vectors(words, source_words, torch.from_numpy(vectors), embedding.weight,
                                                  skip=specials, normalise=normalise,
                                                  match_scale=t.vector_scale == "match")}
        name = next(n for n, m in model.named_modules() if m is embedding) + ".weight"
        report.setdefault("pretrained_parameters", [])
        if name not in report["pretrained_parameters"]:
            report["pretrained_parameters"].append(name)
    return report


def _describe_transfer(report: dict) -> str:
    lines = []
    for key, what in (("embedding_coverage", "LM embeddings"), ("word_vectors", "word vectors")):
        if key in report:
            c = report[key]
            lines.append(f"transfer: {what} found for {c['exact']} words, {c['lowercase']} more lower-cased, "
                         f"{c['missing']} missing, of {c['total']}"
                         + (f"; scaled by {c['scale']:.4g} to the initial spread" if "scale" in c else ""))
    lines += [f"transfer: copied {name}" for name in report.get("copied", [])]
    lines += [f"transfer: skipped {why}" for why in report.get("skipped", [])]
    return "\n".join(lines)


def run_experiment(cfg: ExperimentConfig, accelerator: Accelerator | None = None) -> dict:
    accelerator = accelerator or make_accelerator(cfg)
    provenance = {"git_commit": git_commit(), "command": command_line()}  # the code as it was at start
    run_dir = Path(cfg.run.dir)
    if accelerator.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_yaml(cfg))
    set_seed(cfg.train.seed)
    task = TASKS[cfg.task](cfg, accelerator)
    model = build_model(cfg.model_name, cfg.model_config(**task.model_values()))
    transfer = apply_transfer(model, cfg, task)
    if transfer:
        accelerator.print(_describe_transfer(transfer))
    trainer = Trainer(task, model, cfg, accelerator, set(transfer.get("pretrained_parameters", ())))
    if cfg.model_name == "lightrnn":
        trainer.epoch_end_hooks.append(WordReallocation(cfg.lightrnn))
    state = trainer.fit()
    trainer.restore_best()

    best = next(h for h in state.history if h["step"] == state.best_step)
    valid = {k[len("valid_"):]: v for k, v in best.items() if k.startswith("valid_")}
    test = task.evaluate(trainer.model, "test")
    record = {
        "task": cfg.task,
        "dataset": task.dataset,
        "model": cfg.model_name,
        "params": trainer.unwrapped.param_counts(),
        "metrics": task.record_metrics(valid, test),
        "train": {
            "tokens_per_second": state.train_tokens / state.train_seconds if state.train_seconds else 0.0,
            "wall_seconds": state.wall_seconds,
            "train_seconds": state.train_seconds,
            "steps": state.step,
            "epochs": trainer.epochs_done,
            "stop_reason": state.stop_reason,
            "best_step": state.best_step,
            "nonfinite_steps": state.nonfinite_total,
            "history": state.history,
        },
        **task.inference_record(trainer.model, test),
        "data": task.data_record(),
        **({"transfer": transfer} if transfer else {}),
        **({"lightrnn": {"reallocations": [e for e in state.events if e.get("event") == "reallocation"]}}
           if cfg.model_name == "lightrnn" else {}),
        "peak_memory_bytes": peak_memory_bytes(accelerator.device),
        "hardware": hardware(accelerator),
        "seed": cfg.train.seed,
        **provenance,
        "config": cfg.to_dict(),
    }
    if accelerator.is_main_process:
        write_record(run_dir / "result.json", record)
        if (run_dir / "model" / "config.json").exists():
            write_model_card(run_dir / "model", record)
        shown = " | ".join(f"{k} {v:.2f}" for k, v in record["metrics"].items()
                           if isinstance(v, float) and k.split("_")[1] in ("ppl", "bleu", "chrf", "f1"))
        print(f"{shown} | {record['train']['tokens_per_second']:.0f} tokens/s | {state.wall_seconds / 60:.1f} min "
              f"| {state.stop_reason} -> {run_dir / 'result.json'}")
    accelerator.end_training()
    return record
