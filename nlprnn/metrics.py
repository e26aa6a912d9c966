"""Every number nlprnn reports is defined here, once.

Perplexity is exp(sum of token NLL / number of predicted tokens), where both sums run over all
processes before the division: averaging per-process perplexities (or per-batch means) would weight
tokens unequally and give a number that depends on how many processes evaluated.
"""

from __future__ import annotations

import math
import os
import platform
import resource
import sys
import time

import torch


def perplexity(nll_sum: float, num_tokens: int) -> float:
    """exp(mean NLL per predicted token); inf when the mean overflows."""
    if num_tokens <= 0:
        raise ValueError("perplexity needs at least one predicted token")
    mean = nll_sum / num_tokens
    return math.exp(mean) if mean < 700 else math.inf


def sum_across_processes(accelerator, *values: float) -> list[float]:
    """Sum scalars over every process (float64, so large token counts stay exact)."""
    if accelerator is None or accelerator.num_processes == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").tolist()


def corpus_perplexity(nll_sum: float, num_tokens: int, accelerator=None) -> dict:
    """Perplexity of a whole split from this process's sums; the same on every process."""
    nll_sum, num_tokens = sum_across_processes(accelerator, nll_sum, num_tokens)
    return {"ppl": perplexity(nll_sum, int(num_tokens)), "nll": nll_sum / num_tokens, "tokens": int(num_tokens)}


class Throughput:
    """Tokens per second over the time spent inside `measure()` blocks (evaluation excluded)."""

    def __init__(self, tokens: int = 0, seconds: float = 0.0):
        self.tokens = tokens
        self.seconds = seconds

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens
        self.seconds += seconds

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings measure the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_bytes(device: torch.device | None = None) -> int:
    """Peak memory of this process: allocated GPU memory on CUDA, resident set size on CPU."""
    if device is not None and device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # Linux reports KiB, macOS bytes


def hardware(accelerator=None) -> dict:
    """What the numbers were measured on: enough to tell two machines apart in the leaderboard."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": "cpu",
        "gpu": None,
        "num_processes": 1,
        "mixed_precision": "no",
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    if accelerator is not None:
        info["device"] = accelerator.device.type
        info["num_processes"] = accelerator.num_processes
        info["mixed_precision"] = str(accelerator.mixed_precision)
        info["distributed_type"] = str(accelerator.distributed_type)
    return info


class Stopwatch:
    def __init__(self):
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
