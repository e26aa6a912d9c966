"""`nlprnn train | evaluate | generate | translate | tag`: the command line over the library.

Errors a user can fix (`NlprnnError`) are printed as one line, without a traceback, and exit with 2.
"""

from __future__ import annotations

import argparse
import sys

from nlprnn.errors import NlprnnError


def run_main(fn, *args) -> int:
    """Call `fn`; turn a user-fixable error into one line on stderr and exit status 2."""
    try:
        fn(*args)
    except NlprnnError as e:
        print(f"nlprnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nlprnn: interrupted", file=sys.stderr)
        return 130
    return 0


def cmd_train(args, rest: list[str]) -> None:
    from nlprnn.config import parse_args
    from nlprnn.train.experiment import run_experiment

    run_experiment(parse_args(([f"--config={args.config}"] if args.config else []) + rest, task=args.task))


def cmd_evaluate(args, rest: list[str]) -> None:
    import torch

    from nlprnn.data.batching import BPTTStreams, encode_lm_split
    from nlprnn.data.corpora import resolve_text_corpus
    from nlprnn.hub import from_pretrained
    from nlprnn.metrics import corpus_perplexity
    from nlprnn.train.tasks import default_cache_dir, lm_split_nll

    _no_extra(rest)
    model, vocab = from_pretrained(args.model, "cuda" if torch.cuda.is_available() else "cpu")
    if vocab is None:
        raise NlprnnError(f"{args.model}: checkpoint has no vocab.json")
    corpus = resolve_text_corpus(args.data, args.name, splits=(args.split,))
    tokens = encode_lm_split(corpus.splits[args.split], vocab, default_cache_dir())
    streams = BPTTStreams(tokens, args.batch_size, args.bptt)
    result = corpus_perplexity(*lm_split_nll(model, streams, next(model.parameters()).device))
    print(f"{args.split} ppl {result['ppl']:.2f} (nll {result['nll']:.4f} over {result['tokens']} tokens)")


def cmd_generate(args, rest: list[str]) -> None:
    import torch

    from nlprnn.hub import from_pretrained

    _no_extra(rest)
    torch.manual_seed(args.seed)
    model, vocab = from_pretrained(args.model)
    if vocab is None:
        raise NlprnnError(f"{args.model}: checkpoint has no vocab.json")
    if args.temperature <= 0:
        raise NlprnnError("--temperature must be > 0")
    prompt = args.prompt.split() if args.prompt else ["<eos>"]
    ids = torch.tensor([vocab.encode(prompt)])
    words, state = [], None
    with torch.no_grad():
        for _ in range(args.words):
            logprobs, state = model.next_token_logprobs(ids, state)
            logits = logprobs[0] / args.temperature
            if args.top_k > 0:
                kth = torch.topk(logits, min(args.top_k, logits.numel())).values[-1]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            token = int(torch.multinomial(torch.softmax(logits, -1), 1))
            words.append(vocab.itos[token])
            ids = torch.tensor([[token]])
    text = " ".join(([] if not args.prompt else prompt) + words).replace(" <eos> ", "\n").replace("<eos>", "\n")
    print(text)


def cmd_translate(args, rest: list[str]) -> None:
    import itertools

    import torch
    from tqdm.auto import tqdm

    from nlprnn.decoding import translate_texts
    from nlprnn.hub import from_pretrained, load_tokenizers

    _no_extra(rest)
    model, _ = from_pretrained(args.model, "cuda" if torch.cuda.is_available() else "cpu")
    tokenizers = load_tokenizers(args.model)
    if set(tokenizers) != {"src", "tgt"}:
        raise NlprnnError(f"{args.model}: not a translation checkpoint (no src/tgt tokenizers in config.json)")
    if args.n_best > args.beam:
        raise NlprnnError(f"--n-best {args.n_best} is more than --beam {args.beam}")
    source = open(args.input, encoding="utf-8") if args.input else sys.stdin
    # Read a block, translate it, write it: output starts at once and memory stays flat for any input size.
    block = 8 * args.batch_size
    with tqdm(unit=" sentences", file=sys.stderr, disable=args.quiet) as bar:
        lines = []
        for line in itertools.chain(source, [None]):
            if line is not None:
                lines.append(line.rstrip("\n"))
            if lines and (line is None or len(lines) == block):
                for nbest in translate_texts(model, tokenizers, lines, args.beam, args.alpha, args.max_ratio,
                                             args.n_best, args.batch_size):
                    print("\n".join(nbest) if args.n_best > 1 else nbest[0], flush=False)
                sys.stdout.flush()
                bar.update(len(lines))
                lines = []
    if args.input:
        source.close()


def cmd_tag(args, rest: list[str]) -> None:
    from nlprnn.data.tags import convert
    from nlprnn.data.vocab import WordVocab
    from nlprnn.hub import from_pretrained, read_checkpoint_config
    from nlprnn.train.tagging import tag_sentences

    _no_extra(rest)
    model, words = from_pretrained(args.model)
    config = read_checkpoint_config(args.model)
    if "char_vocab" not in config or words is None:
        raise NlprnnError(f"{args.model}: not a tagger checkpoint (no char_vocab in config.json)")
    chars = WordVocab(config["char_vocab"])
    options = config["normalise"]
    source = open(args.input, encoding="utf-8") if args.input else sys.stdin
    # --format lines: one sentence per line, tokens separated by whitespace; conll: token in the first column,
    # a blank line between sentences, -DOCSTART- lines skipped.
    sentences, current = [], []
    for line in source:
        columns = line.split()
        if args.format == "lines":
            if columns:
                sentences.append(columns)
        elif columns and columns[0] != "-DOCSTART-":
            current.append(columns[0])
        elif current:
            sentences.append(current)
            current = []
    if current:
        sentences.append(current)
    if args.input:
        source.close()
    scheme = config["config"]["tag_scheme"]
    for tokens, tags in zip(sentences, tag_sentences(model, words, chars, config["config"]["tags"], sentences,
                                                     options["lowercase"], options["digits_to_zero"])):
        for token, tag in zip(tokens, convert(tags, scheme, args.scheme)):
            print(f"{token}\t{tag}")
        print()


def _no_extra(rest: list[str]) -> None:
    if rest:
        raise NlprnnError(f"unexpected arguments: {' '.join(rest)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nlprnn", description="Recurrent models for NLP.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model from a YAML config with key=value overrides")
    p.add_argument("--config", "-c", help="YAML config, e.g. recipes/configs/lm/wikitext2_lstm.yaml")
    p.add_argument("--task", default="lm", choices=["lm", "mt", "ner"])
    p.set_defaults(fn=cmd_train)
    p = sub.add_parser("evaluate", help="perplexity of a saved language model on a split")
    p.add_argument("--model", required=True, help="checkpoint directory (save_pretrained)")
    p.add_argument("--data", required=True, help="corpus folder or hub dataset id")
    p.add_argument("--name", default=None, help="hub dataset configuration")
    p.add_argument("--split", default="test", choices=["train", "valid", "test"])
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--bptt", type=int, default=35)
    p.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("generate", help="sample text from a saved language model")
    p.add_argument("--model", required=True, help="checkpoint directory (save_pretrained)")
    p.add_argument("--prompt", default="", help="words to start from (default: a new line)")
    p.add_argument("--words", type=int, default=50)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely words; 0 = all")
    p.add_argument("--seed", type=int, default=1111)
    p.set_defaults(fn=cmd_generate)
    p = sub.add_parser("translate", help="translate sentences (one per line) with a saved translation model")
    p.add_argument("--model", required=True, help="checkpoint directory (save_pretrained)")
    p.add_argument("--input", default=None, help="text file, one sentence per line (default: stdin)")
    p.add_argument("--beam", type=int, default=5, help="beam size; 1 = greedy")
    p.add_argument("--alpha", type=float, default=0.6, help="GNMT length penalty exponent")
    p.add_argument("--max-ratio", type=float, default=2.0, help="longest output, as a multiple of the source")
    p.add_argument("--n-best", type=int, default=1, help="write this many translations per sentence")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(fn=cmd_translate)
    sub.add_parser("leaderboard", help="regenerate leaderboard/README.md and plots (--check, --reproduce)")
    p = sub.add_parser("tag", help="tag tokenised sentences (one per line, or CoNLL columns) with a saved tagger")
    p.add_argument("--model", required=True, help="checkpoint directory (save_pretrained)")
    p.add_argument("--input", default=None, help="text file (default: stdin)")
    p.add_argument("--format", default="lines", choices=["lines", "conll"], help="input layout")
    p.add_argument("--scheme", default="iob2", choices=["iob1", "iob2", "bioes"], help="tag scheme of the output")
    p.set_defaults(fn=cmd_tag)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["leaderboard"]:  # its own parser: --check, --reproduce
        from nlprnn.leaderboard import main as leaderboard_main

        return leaderboard_main(argv[1:])
    args, rest = build_parser().parse_known_args(argv)
    return run_main(args.fn, args, rest)


if __name__ == "__main__":
    sys.exit(main())
