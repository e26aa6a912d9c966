"""Decoding speed of translation models: greedy vs beam 5 vs beam 10, batched vs one sentence at a time.

    python benchmarks/decode_speed.py --model runs/multi30k_de_en_gru_attn/model \\
        runs/multi30k_de_en_transformer/model --input ../shared/data/multi30k/test2016.de \\
        --json leaderboard/results/benchmarks/decode_speed_<model>.json

For each saved model (any family: attention RNN or Transformer) the source sentences are translated with
each beam size, once in batches of `--batch-size` sentences (length-sorted) and once a sentence at a time
(`--single` of them, since that is slow); every setting runs after one untimed warm-up batch. Printed:
sentences/s per setting and the ratio of batched beam-5 time to batched greedy time. Target (the
translation issue): batched beam 5 costs at most 3x greedy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def timed(model, tokenizers, sentences, beam: int, batch_size: int) -> float:
    from nlprnn.decoding import translate_texts

    translate_texts(model, tokenizers, sentences[:batch_size], beam_size=beam, batch_size=batch_size)  # warm-up
    start = time.perf_counter()
    translate_texts(model, tokenizers, sentences, beam_size=beam, batch_size=batch_size)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", nargs="+", required=True, help="checkpoint directories (save_pretrained)")
    parser.add_argument("--input", default=str(REPO.parent / "shared" / "data" / "multi30k" / "test2016.de"))
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--single", type=int, default=100, help="sentences decoded one at a time per setting")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from nlprnn.hub import from_pretrained, load_tokenizers

    sentences = Path(args.input).read_text(encoding="utf-8").splitlines()
    rows = []
    print(f"{len(sentences)} sentences from {args.input}; {torch.get_num_threads()} threads")
    print(f"{'model':<28} {'beam':>4} {'batched sent/s':>15} {'single sent/s':>14} {'batched/single':>15}")
    for directory in args.model:
        model, _ = from_pretrained(directory)
        tokenizers = load_tokenizers(directory)
        name = f"{model.model_name} ({Path(directory).parent.name})"
        for beam in args.beams:
            batched = len(sentences) / timed(model, tokenizers, sentences, beam, args.batch_size)
            few = sentences[: args.single]
            single = len(few) / timed(model, tokenizers, few, beam, 1)
            rows.append({"model": model.model_name, "checkpoint": str(directory), "beam_size": beam,
                         "batched_sentences_per_second": batched, "single_sentences_per_second": single})
            print(f"{name:<28} {beam:>4} {batched:>15.1f} {single:>14.1f} {batched / single:>15.2f}", flush=True)
        by_beam = {r["beam_size"]: r for r in rows if r["checkpoint"] == str(directory)}
        if 1 in by_beam:
            for row in by_beam.values():
                row["batched_time_vs_greedy"] = (by_beam[1]["batched_sentences_per_second"]
                                                 / row["batched_sentences_per_second"])
        if 1 in by_beam and 5 in by_beam:
            cost = by_beam[5]["batched_time_vs_greedy"]
            verdict = "met" if cost <= 3.0 else "NOT met"
            print(f"{name}: batched beam 5 takes {cost:.2f}x the time of greedy (target <= 3x: {verdict})")

    if args.json:
        from nlprnn.io import atomic_write_json
        from nlprnn.metrics import hardware
        from nlprnn.results import command_line, git_commit, now_iso

        atomic_write_json(args.json, {"benchmark": "decode_speed", "input": args.input, "rows": rows,
                                      "threads": torch.get_num_threads(), "hardware": hardware(),
                                      "git_commit": git_commit(), "command": command_line(), "date": now_iso()})


if __name__ == "__main__":
    main()
