"""Sequence labelling (NER) recipe: config in, result.json out.

    accelerate launch recipes/ner.py --config recipes/configs/ner/conll2003_bilstm_crf.yaml
    python recipes/ner.py --config recipes/configs/ner/tiny.yaml run.dir=runs/ner_tiny
"""

import sys

from nlprnn.cli import run_main
from nlprnn.config import parse_args
from nlprnn.train.experiment import run_experiment


def main(argv=None):
    run_experiment(parse_args(argv, task="ner"))


if __name__ == "__main__":
    sys.exit(run_main(main))
