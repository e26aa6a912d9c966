"""Tagger speed: training and decoding sentences/s of the BiLSTM tagger with a CRF vs a softmax output.

    python benchmarks/tagger_speed.py --data ../shared/data/conll2003 --steps 50

Both heads run on the same model config (recipes/configs/ner/conll2003_bilstm_crf.yaml unless --config) and
the same batches of the training split: `--steps` timed training steps (forward, loss, backward, clip, SGD
step) after `--warmup` untimed ones, then decoding of the validation split (Viterbi for the CRF, argmax for
the softmax). Printed: sentences/s of each and the CRF/softmax ratios.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def measure(cfg, head: str, steps: int, warmup: int) -> dict:
    from accelerate import Accelerator

    from nlprnn.models import build_model
    from nlprnn.train.tasks import TASKS

    cfg.model["head"] = head
    accelerator = Accelerator(cpu=True)
    task = TASKS["ner"](cfg, accelerator)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model_name, cfg.model_config(**task.model_values()))
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.train.lr)
    sentences, seconds = 0, 0.0
    for index, batch in task.train_batches(0):
        if index == warmup + steps:
            break
        start = time.perf_counter()
        loss, _ = task.train_loss(model, batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        if index >= warmup:
            seconds += time.perf_counter() - start
            sentences += batch[0].shape[0]
    result = task.evaluate(model, "valid")
    return {"head": head, "train_sentences_per_second": sentences / seconds,
            "decode_sentences_per_second": result["sentences_per_second"], "valid_sentences": result["sentences"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "recipes" / "configs" / "ner" / "conll2003_bilstm_crf.yaml"))
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "conll2003"))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from nlprnn.config import load_config

    rows = []
    for head in ("softmax", "crf"):
        cfg = load_config(args.config, [f"data.path={args.data}", "run.dir=/tmp/nlprnn-tagger-speed"])
        rows.append(measure(cfg, head, args.steps, args.warmup))
        row = rows[-1]
        print(f"{head:>8}: train {row['train_sentences_per_second']:8.1f} sentences/s   "
              f"decode {row['decode_sentences_per_second']:8.1f} sentences/s", flush=True)
    softmax, crf = rows
    print(f"CRF / softmax: training speed {crf['train_sentences_per_second'] / softmax['train_sentences_per_second']:.2f}, "
          f"decoding speed {crf['decode_sentences_per_second'] / softmax['decode_sentences_per_second']:.2f}")
    if args.json:
        from nlprnn.io import atomic_write_json
        from nlprnn.metrics import hardware
        from nlprnn.results import command_line, git_commit, now_iso

        atomic_write_json(args.json, {"benchmark": "tagger_speed", "rows": rows, "threads": torch.get_num_threads(),
                                      "hardware": hardware(), "git_commit": git_commit(), "command": command_line(),
                                      "date": now_iso()})


if __name__ == "__main__":
    main()
