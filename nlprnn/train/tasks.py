"""Tasks: what turns a batch into a loss and a split into metrics. The training loop calls only these.

A task object holds the data of one experiment (vocabulary, encoded splits) and this process's share of
it. Interface used by `Trainer`: `num_train_batches`, `train_batches(epoch, start)`,
`train_loss(model, batch) -> (mean loss, local tokens)`, `evaluate(model, split) -> metrics`,
`main_metric`, `higher_is_better`, `loss_per_token` (whether exp(loss) is a perplexity worth logging),
`state_tensors()` / `load_state_tensors()` for exact resume.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from nlprnn.config import ExperimentConfig
from nlprnn.data.batching import BPTTStreams, encode_lm_split
from nlprnn.data.corpora import lm_tokens, resolve_text_corpus
from nlprnn.data.vocab import WordVocab
from nlprnn.errors import NlprnnError
from nlprnn.metrics import corpus_perplexity, synchronize
from nlprnn.models.common import detach_state


def default_cache_dir() -> Path:
    return Path(os.environ.get("NLPRNN_CACHE", Path.home() / ".cache" / "nlprnn"))


def _flatten_state(state, prefix: str = "state") -> dict[str, torch.Tensor]:
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        return {prefix: state.detach().contiguous().cpu()}
    out = {}
    for i, part in enumerate(state):
        out.update(_flatten_state(part, f"{prefix}.{i}"))
    return out


def _unflatten_state(tensors: dict[str, torch.Tensor], device, prefix: str = "state"):
    if prefix in tensors:
        return tensors[prefix].to(device)
    children = sorted({int(k[len(prefix) + 1:].split(".")[0]) for k in tensors if k.startswith(prefix + ".")})
    if not children:
        return None
    return tuple(_unflatten_state(tensors, device, f"{prefix}.{i}") for i in children)


@torch.no_grad()
def lm_split_nll(model, streams: BPTTStreams, device) -> tuple[float, int]:
    """Sum of NLL and number of predicted tokens over this process's streams, state carried throughout."""
    model.eval()
    nll_sum, count, state = 0.0, 0, None
    for _, inputs, targets in streams.iter_from(0):
        nll, state = model(inputs.to(device), targets.to(device), state)
        nll_sum += float(nll.double().sum())
        count += targets.numel()
    synchronize(device)
    return nll_sum, count


class LanguageModeling:
    """Word-level LM with truncated BPTT: hidden state carried (and detached) across chunks.

    Each process reads its own contiguous block of streams, so P processes with B/P streams each compute
    exactly what one process with B streams computes. Evaluation carries state the same way over the
    whole split with `data.eval_batch_size` streams; perplexity is summed over processes before dividing.
    """

    main_metric = "ppl"
    higher_is_better = False
    loss_per_token = True

    def __init__(self, cfg: ExperimentConfig, accelerator):
        self.cfg = cfg
        self.accelerator = accelerator
        data = cfg.data
        corpus = resolve_text_corpus(data.path, data.name)
        self.dataset = corpus.source.rstrip("/").split("/")[-1] if data.name is None else f"{data.path}/{data.name}"
        self.vocab = WordVocab.build(
            (lm_tokens(line) for _, line in corpus.splits["train"].iter_lines()),
            min_freq=data.min_freq, max_size=data.max_size, specials=("<unk>", "<eos>"),
        )
        cache = Path(data.cache_dir) if data.cache_dir else default_cache_dir()
        # The main process encodes first; the others then find the cached token files.
        with accelerator.main_process_first():
            self.tokens = {name: encode_lm_split(split, self.vocab, cache) for name, split in corpus.splits.items()}
        rank, world = accelerator.process_index, accelerator.num_processes
        self.train_streams = BPTTStreams(self.tokens["train"], data.batch_size, data.bptt, rank, world)
        self.eval_streams = {
            name: BPTTStreams(self.tokens[name], data.eval_batch_size, data.bptt, rank, world)
            for name in ("valid", "test")
        }
        if cfg.train.metric not in ("auto", "ppl"):
            raise NlprnnError(f"train.metric: language modelling is scored by ppl (or auto), got {cfg.train.metric!r}")
        self.state = None  # carried hidden state of the training streams
        self.eval_seconds: dict[str, float] = {}

    # -- what the model needs from the data ---------------------------------------------------------
    def model_values(self) -> dict:
        return {"vocab_size": len(self.vocab)}

    def checkpoint_files(self) -> dict:
        """What `save_pretrained` stores beside the weights."""
        return {"vocab": self.vocab}

    def transfer_words(self) -> list[str]:
        """The words pretrained vectors are aligned with, in embedding-row order."""
        return self.vocab.itos

    # -- training -----------------------------------------------------------------------------------
    @property
    def num_train_batches(self) -> int:
        return len(self.train_streams)

    def train_batches(self, epoch: int, start: int = 0):
        if start == 0:
            self.state = None  # every epoch starts from a zero state, as in pytorch/examples
        device = self.accelerator.device
        for index, inputs, targets in self.train_streams.iter_from(start):
            yield index, (inputs.to(device), targets.to(device))

    def train_pass(self):
        """This process's training streams once, in order, as (inputs, targets): for Light RNN's costs."""
        for _, inputs, targets in self.train_streams.iter_from(0):
            yield inputs, targets

    def train_loss(self, model, batch):
        inputs, targets = batch
        nll, state = model(inputs, targets, detach_state(self.state))
        self.state = state
        return nll.mean(), targets.numel()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return _flatten_state(detach_state(self.state))

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.state = _unflatten_state(tensors, self.accelerator.device)

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, model, split: str) -> dict:
        start = time.perf_counter()
        nll_sum, count = lm_split_nll(model, self.eval_streams[split], self.accelerator.device)
        self.eval_seconds[split] = time.perf_counter() - start
        return corpus_perplexity(nll_sum, count, self.accelerator)

    def record_metrics(self, valid: dict, test: dict) -> dict:
        return {"valid_ppl": valid["ppl"], "test_ppl": test["ppl"], "valid_nll": valid["nll"], "test_nll": test["nll"]}

    def inference_record(self, model, test: dict) -> dict:
        return {"inference": {"test_seconds": self.eval_seconds["test"],
                              "tokens_per_second": test["tokens"] / self.eval_seconds["test"]}}

    def data_record(self) -> dict:
        d = self.cfg.data
        return {
            "vocab_size": len(self.vocab),
            "tokens": {name: int(len(t)) for name, t in self.tokens.items()},
            "batch_size": d.batch_size,
            "eval_batch_size": d.eval_batch_size,
            "bptt": d.bptt,
            "evaluation": "word-level perplexity over every token incl. <eos>, hidden state carried "
                          "across the whole split with eval_batch_size streams",
        }


def _translation(cfg, accelerator):
    from nlprnn.train.translation import Translation  # sacrebleu and the decoders load only when needed

    return Translation(cfg, accelerator)


def _tagging(cfg, accelerator):
    from nlprnn.train.tagging import Tagging  # seqeval loads only when needed

    return Tagging(cfg, accelerator)


TASKS = {"lm": LanguageModeling, "mt": _translation, "ner": _tagging}
