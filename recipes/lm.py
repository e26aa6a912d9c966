"""Language-model recipe: config in, result.json out.

    accelerate launch recipes/lm.py --config recipes/configs/lm/wikitext2_lstm.yaml train.max_minutes=30
    python recipes/lm.py --config recipes/configs/lm/tiny.yaml run.dir=runs/tiny
"""

import sys

from nlprnn.cli import run_main
from nlprnn.config import parse_args
from nlprnn.train.experiment import run_experiment


def main(argv=None):
    run_experiment(parse_args(argv, task="lm"))


if __name__ == "__main__":
    sys.exit(run_main(main))
