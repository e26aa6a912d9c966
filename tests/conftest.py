"""Shared pytest setup.

Test machines reach package registries but not dataset hubs, so the hub libraries are put in
offline mode before anything imports them: a hub lookup fails fast instead of hanging on the network.
"""

import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# Tiny models on a 2-core machine run fastest single-threaded: two busy threads per test process
# mostly wait on each other (and on whatever else the machine runs).
import torch  # noqa: E402

torch.set_num_threads(1)
