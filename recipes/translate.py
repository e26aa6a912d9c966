"""Translation recipe: config in, result.json out.

    accelerate launch recipes/translate.py --config recipes/configs/mt/multi30k_de_en_gru_attn.yaml
    python recipes/translate.py --config recipes/configs/mt/tiny.yaml run.dir=runs/mt_tiny
"""

import sys

from nlprnn.cli import run_main
from nlprnn.config import parse_args
from nlprnn.train.experiment import run_experiment


def main(argv=None):
    run_experiment(parse_args(argv, task="mt"))


if __name__ == "__main__":
    sys.exit(run_main(main))
