"""Translation task: SentencePiece pieces, token-budget batches, label-smoothed loss, BLEU by beam search.

The same training loop as language modelling drives it (see `tasks.py` for the task interface). What is
particular here:

- Tokenizers are trained on the training split by the main process at the start of a run and saved in
  `<run.dir>/tokenizer`; the other processes, and a resumed run, load them from there.
- Every process builds the same global list of batches for an epoch (`seq_batching.training_batches`) and
  takes its share of the examples of each batch. The loss is the sum over the process's target pieces times
  world / (target pieces of the whole batch), so after DDP averages the gradients the step is exactly that of
  the batch's mean loss on one process.
- Evaluation splits the sentences across processes, gathers the detokenised outputs and scores them with
  sacreBLEU (default 13a tokenisation, cased) and chrF; every process gets the same numbers.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate.utils import gather_object

from nlprnn.config import ExperimentConfig
from nlprnn.data.parallel import read_pairs, resolve_parallel_corpus
from nlprnn.data.seq_batching import pad, training_batches
from nlprnn.data.spm import SentencePieceTokenizer
from nlprnn.decoding import translate_texts
from nlprnn.errors import NlprnnError
from nlprnn.io import atomic_write_bytes, atomic_write_text

PAD, UNK, BOS, EOS = 0, 1, 2, 3  # the ids SentencePieceTokenizer.train gives the specials
METRICS = {"bleu": True, "chrf": True, "loss": False, "ppl": False}  # name -> higher is better


def bleu_and_chrf(hypotheses: list[str], references: list[str]) -> dict:
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    return {"bleu": bleu.corpus_score(hypotheses, [references]).score,
            "chrf": chrf.corpus_score(hypotheses, [references]).score,
            "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature())}


class Translation:
    loss_per_token = True

    def __init__(self, cfg: ExperimentConfig, accelerator):
        self.cfg, self.accelerator = cfg, accelerator
        d = cfg.data
        splits = {"train": d.train_split, "valid": d.valid_split, "test": d.test_split}
        corpus = resolve_parallel_corpus(d.path, d.src, d.tgt, splits, d.name)
        self.dataset = corpus.source.rstrip("/").split("/")[-1] + f" {d.src}-{d.tgt}"
        train_pairs, self.skipped_empty = read_pairs(corpus["train"], skip_empty=True)
        self.pairs = {split: read_pairs(corpus[split], skip_empty=False)[0] for split in ("valid", "test")}
        if d.valid_subset:
            self.pairs["valid"] = self.pairs["valid"][: d.valid_subset]
        self.tokenizers = self._tokenizers(train_pairs)

        self.train_src, self.train_tgt, self.skipped_long = [], [], 0
        for src, tgt in train_pairs:
            src_ids = self.tokenizers["src"].encode(src) + [EOS]
            tgt_ids = self.tokenizers["tgt"].encode(tgt)
            if len(src_ids) > d.max_length or len(tgt_ids) + 1 > d.max_length:
                self.skipped_long += 1
                continue
            self.train_src.append(src_ids)
            self.train_tgt.append(tgt_ids)
        if not self.train_src:
            raise NlprnnError(f"{corpus['train'].location}: no training pair has at most data.max_length="
                              f"{d.max_length} pieces on both sides")
        self.lengths = np.array([max(len(s), len(t) + 1) for s, t in zip(self.train_src, self.train_tgt)])

        metric = cfg.train.metric if cfg.train.metric != "auto" else "bleu"
        if metric not in METRICS:
            raise NlprnnError(f"train.metric: the translation task scores {', '.join(METRICS)} (or auto = bleu), "
                              f"got {metric!r}")
        self.main_metric, self.higher_is_better = metric, METRICS[metric]
        self._epoch_cache: tuple[int, list] | None = None
        self.num_train_batches = len(self._batches(0))
        self.eval_seconds: dict[str, float] = {}
        self.hypotheses: dict[str, list[str]] = {}
        self.signatures: dict[str, str] = {}

    # -- tokenizers ---------------------------------------------------------------------------------
    def _tokenizers(self, train_pairs) -> dict:
        d, acc = self.cfg.data, self.accelerator
        folder = Path(self.cfg.run.dir) / "tokenizer"
        roles = ("src",) if d.joint_vocab else ("src", "tgt")
        with acc.main_process_first():
            if acc.is_main_process and not all((folder / f"spm.{role}.model").exists() for role in roles):
                for role in roles:
                    if d.joint_vocab:
                        lines = [s for s, _ in train_pairs] + [t for _, t in train_pairs]
                    else:
                        lines = [pair[0 if role == "src" else 1] for pair in train_pairs]
                    tokenizer = SentencePieceTokenizer.train(lines=lines, vocab_size=d.vocab_size,
                                                             model_type=d.spm_model_type, seed=self.cfg.train.seed)
                    folder.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(folder / f"spm.{role}.model", tokenizer.model_proto)
            loaded = {role: SentencePieceTokenizer.load(folder / f"spm.{role}.model") for role in roles}
        return {"src": loaded["src"], "tgt": loaded["src" if d.joint_vocab else "tgt"]}

    def model_values(self) -> dict:
        return {"src_vocab_size": len(self.tokenizers["src"]), "tgt_vocab_size": len(self.tokenizers["tgt"]),
                "pad_id": PAD, "bos_id": BOS, "eos_id": EOS}

    def checkpoint_files(self) -> dict:
        return {"tokenizers": dict(self.tokenizers)}

    def transfer_words(self) -> list[str]:
        """Source pieces as words, for aligning pretrained word vectors: "\u2581house" -> "house"."""
        return [piece[1:] if piece.startswith("\u2581") and len(piece) > 1 else piece
                for piece in self.tokenizers["src"].pieces()]

    # -- training -----------------------------------------------------------------------------------
    def _batches(self, epoch: int) -> list:
        """The epoch's global batches, each with this process's share of it and the batch's target count."""
        if self._epoch_cache and self._epoch_cache[0] == epoch:
            return self._epoch_cache[1]
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        batches = []
        for batch in training_batches(self.lengths, self.cfg.data.max_tokens, self.cfg.train.seed, epoch):
            if len(batch) < world:
                continue  # too small to give every process an example
            targets = sum(len(self.train_tgt[i]) + 1 for i in batch)
            batches.append((batch[rank::world], targets))
        self._epoch_cache = (epoch, batches)
        return batches

    def train_batches(self, epoch: int, start: int = 0):
        batches = self._batches(epoch)
        world, device = self.accelerator.num_processes, self.accelerator.device
        for index in range(start, len(batches)):
            examples, batch_targets = batches[index]
            src, src_lengths = pad([self.train_src[i] for i in examples], PAD)
            tgt_in, _ = pad([[BOS] + self.train_tgt[i] for i in examples], PAD)
            tgt_out, _ = pad([self.train_tgt[i] + [EOS] for i in examples], PAD)
            local_targets = sum(len(self.train_tgt[i]) + 1 for i in examples)
            yield index, (src.to(device), src_lengths, tgt_in.to(device), tgt_out.to(device),
                          world / batch_targets, local_targets)

    def train_loss(self, model, batch):
        src, src_lengths, tgt_in, tgt_out, scale, local_targets = batch
        logits = model(src, src_lengths, tgt_in)
        loss = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=PAD, reduction="sum",
                               label_smoothing=self.cfg.train.label_smoothing)
        return loss * scale, local_targets

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}  # nothing carried between batches: the data position is the batch index

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    # -- evaluation ---------------------------------------------------------------------------------
    def _encode_sources(self, sentences: list[str]) -> list[list[int]]:
        limit = self.cfg.data.max_length
        # Held-out sources are never skipped: an over-long one is cut (and still gets a translation).
        return [(self.tokenizers["src"].encode(s)[: limit - 1]) + [EOS] for s in sentences]

    def translate(self, model, sentences: list[str], beam_size: int, n_best: int = 1) -> list[list[str]]:
        dec, d = self.cfg.decode, self.cfg.data
        return translate_texts(self.accelerator.unwrap_model(model).eval(), self.tokenizers, sentences, beam_size,
                               dec.alpha, dec.max_ratio, n_best, d.eval_batch_size, d.max_length)

    @torch.no_grad()
    def _loss_sums(self, model, pairs) -> tuple[float, int]:
        model.eval()
        total, count = 0.0, 0
        size = self.cfg.data.eval_batch_size
        src_ids = self._encode_sources([s for s, _ in pairs])
        tgt_ids = [self.tokenizers["tgt"].encode(t) for _, t in pairs]
        device = self.accelerator.device
        for start in range(0, len(pairs), size):
            rows = range(start, min(start + size, len(pairs)))
            src, lengths = pad([src_ids[i] for i in rows], PAD)
            tgt_in, _ = pad([[BOS] + tgt_ids[i] for i in rows], PAD)
            tgt_out, _ = pad([tgt_ids[i] + [EOS] for i in rows], PAD)
            logits = model(src.to(device), lengths, tgt_in.to(device))
            total += float(F.cross_entropy(logits.flatten(0, 1).double(), tgt_out.to(device).flatten(),
                                           ignore_index=PAD, reduction="sum"))
            count += int((tgt_out != PAD).sum())
        return total, count

    def evaluate(self, model, split: str, beam_size: int | None = None) -> dict:
        """Loss, perplexity (per target piece), BLEU and chrF of `split`, decoding with `beam_size`."""
        acc = self.accelerator
        beam_size = beam_size or (self.cfg.decode.valid_beam_size if split == "valid" else self.cfg.decode.beam_size)
        pairs = self.pairs[split]
        mine = list(range(acc.process_index, len(pairs), acc.num_processes))
        start = time.perf_counter()
        loss_sum, count = self._loss_sums(model, [pairs[i] for i in mine])
        decode_start = time.perf_counter()
        outputs = self.translate(model, [pairs[i][0] for i in mine], beam_size)
        decode_seconds = time.perf_counter() - decode_start
        gathered = gather_object([(i, o[0]) for i, o in zip(mine, outputs)]) if acc.num_processes > 1 else \
            [(i, o[0]) for i, o in zip(mine, outputs)]
        sums = torch.tensor([loss_sum, count, decode_seconds], dtype=torch.float64, device=acc.device)
        if acc.num_processes > 1:
            sums = acc.reduce(sums, reduction="sum")
        self.hypotheses[split] = [text for _, text in sorted(gathered)]
        self.eval_seconds[split] = time.perf_counter() - start
        scores = bleu_and_chrf(self.hypotheses[split], [t for _, t in pairs])
        self.signatures = {"bleu_signature": scores.pop("bleu_signature"),
                           "chrf_signature": scores.pop("chrf_signature")}
        loss = float(sums[0] / sums[1])
        return {**scores, "loss": loss, "ppl": math.exp(min(loss, 50.0)), "sentences": len(pairs),
                "beam_size": beam_size,
                # Decoding time summed over processes: per-process sentences/s, comparable across runs.
                "sentences_per_second": len(pairs) / float(sums[2])}

    # -- the run record -----------------------------------------------------------------------------
    def record_metrics(self, valid: dict, test: dict) -> dict:
        return {"valid_bleu": valid["bleu"], "valid_chrf": valid["chrf"], "valid_loss": valid["loss"],
                "test_bleu": test["bleu"], "test_chrf": test["chrf"], "test_loss": test["loss"],
                "test_ppl": test["ppl"], **self.signatures}

    def inference_record(self, model, test: dict) -> dict:
        """Decoding speed of the test set with beam search (already run) and greedy search (run now)."""
        beam = {"beam_size": test["beam_size"], "sentences_per_second": test["sentences_per_second"],
                "bleu": test["bleu"]}
        beam_test_seconds = self.eval_seconds["test"]
        if self.accelerator.is_main_process:
            atomic_write_text(Path(self.cfg.run.dir) / "test_translations.txt",
                              "".join(line + "\n" for line in self.hypotheses["test"]))
        greedy = self.evaluate(model, "test", beam_size=1)
        return {"decode": {"beam": beam, "greedy": {"beam_size": 1, "sentences_per_second":
                                                   greedy["sentences_per_second"], "bleu": greedy["bleu"]}},
                "inference": {"test_seconds": beam_test_seconds}}

    def data_record(self) -> dict:
        d = self.cfg.data
        return {
            "src": d.src, "tgt": d.tgt, "joint_vocab": d.joint_vocab,
            "vocab_size": {"src": len(self.tokenizers["src"]), "tgt": len(self.tokenizers["tgt"])},
            "spm_model_type": d.spm_model_type,
            "train_pairs": len(self.train_src), "skipped_empty": self.skipped_empty,
            "skipped_long": self.skipped_long, "max_length": d.max_length, "max_tokens": d.max_tokens,
            "valid_sentences": len(self.pairs["valid"]), "test_sentences": len(self.pairs["test"]),
            "evaluation": "sacreBLEU and chrF on detokenised, cased output against the raw references",
        }
