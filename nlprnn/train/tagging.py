"""Sequence labelling task (NER): CoNLL files, word and character vocabularies, entity F1 by seqeval.

Tags are read in the files' scheme (`data.file_scheme`, IOB1 for CoNLL-2003), converted losslessly to the
training scheme (`data.tag_scheme`, BIOES by default) and predictions are converted back to IOB2 for scoring,
so the metric never depends on the training scheme. F1 is seqeval's default (conlleval-compatible) mode; the
strict mode (entities must be well-formed in IOB2) is reported beside it.

Batches are `data.batch_size` sentences in an order shuffled per (seed, epoch); every process builds the same
list and takes its share of each batch. The loss is the summed sentence NLL x world / sentences in the whole
batch, so the averaged gradient is that of the batch's mean on one process.
"""

from __future__ import annotations

import re
import time

import numpy as np
import torch
from accelerate.utils import gather_object

from nlprnn.config import ExperimentConfig
from nlprnn.data.conll import read_conll, resolve_tagging_corpus
from nlprnn.data.seq_batching import pad
from nlprnn.data.tags import convert
from nlprnn.data.vocab import WordVocab
from nlprnn.errors import NlprnnError, located

PAD, UNK = "<pad>", "<unk>"
METRICS = {"f1": True, "loss": False}


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
    """seqeval precision/recall/F1 (conlleval mode, in percent), strict IOB2 F1 and the per-type report."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    report = classification_report(gold, predicted, output_dict=True, zero_division=0)
    per_type = {kind: {key.replace("-score", ""): float(value) * (1 if key == "support" else 100)
                       for key, value in scores.items()}
                for kind, scores in report.items() if "avg" not in kind}
    return {"f1": 100 * float(f1_score(gold, predicted, zero_division=0)),
            "precision": 100 * float(precision_score(gold, predicted, zero_division=0)),
            "recall": 100 * float(recall_score(gold, predicted, zero_division=0)),
            "strict_f1": 100 * float(f1_score(gold, predicted, mode="strict", scheme=IOB2, zero_division=0)),
            "per_type": per_type}


def normalise(token: str, lowercase: bool, digits_to_zero: bool) -> str:
    token = token.lower() if lowercase else token
    return re.sub(r"\d", "0", token) if digits_to_zero else token


def encode_sentence(tokens: list[str], words: WordVocab, chars: WordVocab, lowercase: bool,
                    digits_to_zero: bool) -> tuple[list[int], list[list[int]]]:
    """Word ids (normalised) and character ids (as written) of one sentence."""
    return (words.encode(normalise(t, lowercase, digits_to_zero) for t in tokens), [chars.encode(t) for t in tokens])


def collate(examples, device):
    """(words (B, L), chars (B, L, C), mask, tags, word count) of (word ids, char ids, tag ids) examples; pad 0."""
    words, _ = pad([e[0] for e in examples], 0)
    width = max(len(c) for e in examples for c in e[1])
    chars = torch.zeros(words.shape[0], words.shape[1], width, dtype=torch.long)
    for row, example in enumerate(examples):
        for column, word in enumerate(example[1]):
            chars[row, column, : len(word)] = torch.tensor(word)
    tags, _ = pad([e[2] for e in examples], 0)
    mask = words != 0
    return words.to(device), chars.to(device), mask.to(device), tags.to(device), sum(len(e[0]) for e in examples)


@torch.no_grad()
def tag_sentences(model, words: WordVocab, chars: WordVocab, tags: list[str], sentences: list[list[str]],
                  lowercase: bool, digits_to_zero: bool, batch_size: int = 128) -> list[list[str]]:
    """Predicted tags (in the model's training scheme) of tokenised sentences, in order."""
    device = next(model.parameters()).device
    encoded = [(*encode_sentence(s, words, chars, lowercase, digits_to_zero), [0] * len(s)) for s in sentences]
    order = sorted((i for i in range(len(encoded)) if encoded[i][0]), key=lambda i: len(encoded[i][0]))
    out: list[list[str]] = [[] for _ in sentences]
    for first in range(0, len(order), batch_size):
        chunk = order[first:first + batch_size]
        word_ids, char_ids, mask, _, _ = collate([encoded[i] for i in chunk], device)
        for i, path in zip(chunk, model.decode(model(word_ids, char_ids, mask), mask)):
            out[i] = [tags[t] for t in path]
    return out


class Tagging:
    # Both heads sum their loss over the batch (as NCRF++ does), not average it per word: exp(loss) is no perplexity.
    loss_per_token = False

    def __init__(self, cfg: ExperimentConfig, accelerator):
        self.cfg, self.accelerator = cfg, accelerator
        d = cfg.data
        files = resolve_tagging_corpus(d.path)
        self.dataset = d.path.rstrip("/").split("/")[-1]
        self.sentences = {name: read_conll(split, d.token_column, d.tag_column, d.file_scheme, d.strict)
                          for name, split in files.items()}
        self.locations = {name: split.location for name, split in files.items()}
        train = self.sentences["train"]
        # Padding is id 0 in both vocabularies: the models mask on it.
        self.words = WordVocab.build(([self.normalise(t) for t in s.tokens] for s in train), min_freq=d.min_freq,
                                     specials=(PAD, UNK))
        self.added_source_words = 0
        if cfg.transfer.add_source_words:
            self._add_source_words()
        self.chars = WordVocab.build((list(t) for s in train for t in s.tokens), specials=(PAD, UNK))
        train_tags = {t for s in train for t in convert(s.tags, d.file_scheme, d.tag_scheme)}
        self.tags = ["O"] + sorted(train_tags - {"O"}, key=lambda t: (t[2:], t[0]))
        self.encoded = {name: self._encode(name) for name in self.sentences}
        self.singletons = np.array(self.words.counts) == 1

        metric = cfg.train.metric if cfg.train.metric != "auto" else "f1"
        if metric not in METRICS:
            raise NlprnnError(f"train.metric: the ner task scores f1 or loss (or auto = f1), got {metric!r}")
        self.main_metric, self.higher_is_better = metric, METRICS[metric]
        self.num_train_batches = len(self._batches(0))
        self.eval_seconds: dict[str, float] = {}
        self.predictions: dict[str, list[list[str]]] = {}

    def _add_source_words(self) -> None:
        """Append the transfer source's words (normalised like ours) that training never saw, count 0."""
        from nlprnn.transfer import SPECIAL_TOKENS, source_words

        t = self.cfg.transfer
        known, added = set(self.words.itos), []
        for word in source_words(t.init_from, t.word_vectors):
            word = self.normalise(word)
            if word not in known and word not in SPECIAL_TOKENS:
                known.add(word)
                added.append(word)
        self.words = WordVocab(self.words.itos + added, self.words.counts + [0] * len(added), unk=UNK)
        self.added_source_words = len(added)

    def normalise(self, token: str) -> str:
        return normalise(token, self.cfg.data.lowercase, self.cfg.data.digits_to_zero)

    def _encode(self, name: str):
        d = self.cfg.data
        tag_ids = {t: i for i, t in enumerate(self.tags)}
        encoded = []
        for sentence in self.sentences[name]:
            tags = convert(sentence.tags, d.file_scheme, d.tag_scheme)
            unknown = [t for t in tags if t not in tag_ids]
            if unknown:
                raise located(self.locations[name], sentence.line, f"sentence starting here has tag {unknown[0]!r}, "
                              f"which the training data never uses; known tags: {', '.join(self.tags)}")
            encoded.append((*encode_sentence(sentence.tokens, self.words, self.chars, d.lowercase, d.digits_to_zero),
                            [tag_ids[t] for t in tags]))
        return encoded

    def model_values(self) -> dict:
        return {"vocab_size": len(self.words), "char_vocab_size": len(self.chars), "tags": list(self.tags),
                "tag_scheme": self.cfg.data.tag_scheme, "pad_id": self.words[PAD]}

    def transfer_words(self) -> list[str]:
        return self.words.itos

    def checkpoint_files(self) -> dict:
        d = self.cfg.data
        return {"vocab": self.words, "extra": {"char_vocab": self.chars.itos, "tag_scheme": d.tag_scheme,
                                               "normalise": {"lowercase": d.lowercase,
                                                             "digits_to_zero": d.digits_to_zero}}}

    # -- batches ------------------------------------------------------------------------------------
    def _collate(self, examples):
        return collate(examples, self.accelerator.device)

    def _batches(self, epoch: int) -> list[np.ndarray]:
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        order = np.random.default_rng([self.cfg.train.seed, epoch]).permutation(len(self.encoded["train"]))
        size = self.cfg.data.batch_size
        batches = [order[i:i + size] for i in range(0, len(order), size)]
        return [(b[rank::world], len(b)) for b in batches if len(b) >= world]

    def train_batches(self, epoch: int, start: int = 0):
        world = self.accelerator.num_processes
        batches = self._batches(epoch)
        for index in range(start, len(batches)):
            examples, batch_sentences = batches[index]
            chosen = [self._training_example(i, epoch) for i in examples]
            yield index, (*self._collate(chosen), world / batch_sentences)

    def _training_example(self, i: int, epoch: int):
        """Sentence i with each once-seen word read as <unk> with chance data.unk_replace (its characters kept).

        The draws depend on (seed, epoch, sentence) only: a resumed run, or one on more processes, replaces
        the same words.
        """
        words, chars, tags = self.encoded["train"][i]
        p = self.cfg.data.unk_replace
        if p == 0:
            return words, chars, tags
        ids = np.array(words)
        draws = np.random.default_rng([self.cfg.train.seed, epoch, int(i)]).random(len(ids))
        ids[self.singletons[ids] & (draws < p)] = self.words.unk_id
        return ids.tolist(), chars, tags

    def train_loss(self, model, batch):
        words, chars, mask, tags, local_words, scale = batch
        emissions = model(words, chars, mask)
        return self.accelerator.unwrap_model(model).loss(emissions, tags, mask) * scale, local_words

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors) -> None:
        pass

    # -- evaluation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict:
        acc = self.accelerator
        inner = acc.unwrap_model(model).eval()
        mine = list(range(acc.process_index, len(self.encoded[split]), acc.num_processes))
        order = sorted(mine, key=lambda i: len(self.encoded[split][i][0]))
        start = time.perf_counter()
        loss, predicted = 0.0, []
        size = self.cfg.data.eval_batch_size
        for first in range(0, len(order), size):
            chunk = order[first:first + size]
            words, chars, mask, tags, _ = self._collate([self.encoded[split][i] for i in chunk])
            emissions = inner(words, chars, mask)
            loss += float(inner.loss(emissions, tags, mask))
            predicted += zip(chunk, inner.decode(emissions, mask))
        seconds = time.perf_counter() - start
        gathered = gather_object(predicted) if acc.num_processes > 1 else predicted
        sums = torch.tensor([loss, seconds], dtype=torch.float64, device=acc.device)
        if acc.num_processes > 1:
            sums = acc.reduce(sums, reduction="sum")
        d = self.cfg.data
        by_index = dict(gathered)
        pred = [convert([self.tags[t] for t in by_index[i]], d.tag_scheme, "iob2") for i in range(len(by_index))]
        gold = [convert(s.tags, d.file_scheme, "iob2") for s in self.sentences[split]]
        self.predictions[split] = pred
        self.eval_seconds[split] = seconds
        scores = entity_scores(gold, pred)
        self.per_type = scores.pop("per_type")
        return {**scores, "loss": float(sums[0]) / len(gold), "sentences": len(gold),
                "sentences_per_second": len(gold) / float(sums[1])}

    # -- the run record -----------------------------------------------------------------------------
    def record_metrics(self, valid: dict, test: dict) -> dict:
        return {"valid_f1": valid["f1"], "test_f1": test["f1"], "valid_strict_f1": valid["strict_f1"],
                "test_strict_f1": test["strict_f1"], "test_precision": test["precision"],
                "test_recall": test["recall"], "per_type": self.per_type,
                "evaluation": "seqeval entity F1 (percent), conlleval-compatible default mode; strict_f1: "
                              "mode=strict, scheme=IOB2"}

    def inference_record(self, model, test: dict) -> dict:
        return {"decode": {"sentences_per_second": test["sentences_per_second"]},
                "inference": {"test_seconds": self.eval_seconds["test"]}}

    def data_record(self) -> dict:
        d = self.cfg.data
        return {"file_scheme": d.file_scheme, "tag_scheme": d.tag_scheme, "tags": self.tags,
                "words": len(self.words), "source_words_added": self.added_source_words,
                "singletons": int(self.singletons.sum()), "unk_replace": d.unk_replace,
                "chars": len(self.chars), "lowercase": d.lowercase,
                "digits_to_zero": d.digits_to_zero,
                "sentences": {name: len(s) for name, s in self.sentences.items()}, "batch_size": d.batch_size}
