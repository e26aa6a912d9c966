"""The leaderboard's plots, drawn with matplotlib from the data `nlprnn.leaderboard.plot_data` gathers.

Each PNG carries the hash of the data it was drawn from in a text chunk, so `nlprnn leaderboard --check`
can tell a stale plot without depending on how matplotlib renders on a given machine.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PLOT_STYLE = 4  # bump when a drawing function changes, so --check asks for the plots to be redrawn


def data_hash(data: dict) -> str:
    return hashlib.sha256(json.dumps([PLOT_STYLE, data], sort_keys=True).encode()).hexdigest()[:16]


def png_data_hash(path: Path) -> str | None:
    """The nlprnn-data text chunk of a PNG written by `draw`."""
    if not path.exists():
        return None
    from PIL import Image

    with Image.open(path) as image:
        return image.text.get("nlprnn-data") if hasattr(image, "text") else None


def _wrapped(label: str, width: int = 48) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(label, width, break_on_hyphens=False)) or label


def _quality_vs_time(fig, data: dict) -> None:
    # Row labels carry the settings that tell rows apart and can be long: points are numbered on the axes
    # and named in a legend beside them.
    ax = fig.add_subplot(1, 1, 1)
    points = data["points"]
    for number, p in enumerate(points, 1):
        ax.scatter(p["minutes"], p["test"], label=f"{number}: {_wrapped(p['model'])}")
        ax.annotate(str(number), (p["minutes"], p["test"]), fontsize=8, xytext=(3, 3), textcoords="offset points")
    front, best = [], None  # Pareto front: no other row is both faster and better
    for p in sorted(points, key=lambda p: p["minutes"]):
        if best is None or (p["test"] > best if data["higher"] else p["test"] < best):
            front.append(p)
            best = p["test"]
    ax.plot([p["minutes"] for p in front], [p["test"] for p in front], "k--", lw=1, label="Pareto front")
    ax.set_xlabel("training wall time (minutes)")
    ax.set_ylabel(f"test {data['metric']}")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7, frameon=False)
    fig.set_size_inches(11, max(4.5, 0.5 * len(points) + 1.5))


def _throughput(fig, data: dict) -> None:
    ax = fig.add_subplot(1, 1, 1)
    points = data["points"]
    labels = [_wrapped(p["model"], 60) for p in points]
    ax.barh(range(len(points)), [p["speed"] for p in points])
    ax.set_yticks(range(len(points)), labels, fontsize=7)
    ax.invert_yaxis()  # first row of the table on top
    ax.set_xlabel("training tokens/s")
    fig.set_size_inches(10, max(3.0, 0.55 * len(points) + 1.2))


def _lightrnn_vs_softmax(fig, data: dict) -> None:
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    rows = [r for r in data["params"] if r.get("size") == 200]
    for key, label in (("lstm", "full softmax"), ("lightrnn", "Light RNN")):
        left.loglog([r["vocab"] for r in rows], [r[key] for r in rows], "o-", label=label)
    left.set_xlabel("vocabulary size V")
    left.set_ylabel("embedding + softmax parameters (E = H = 200)")
    left.legend(fontsize=8)
    speed = data["speed"]
    for model in sorted({r["model"] for r in speed}):
        points = sorted((r for r in speed if r["model"] == model), key=lambda r: r["vocab"])
        right.semilogx([r["vocab"] for r in points], [r["tokens_per_second"] for r in points], "s-", label=model)
    right.set_xlabel("vocabulary size V")
    right.set_ylabel("training tokens/s")
    right.legend(fontsize=8)


def _reallocation(fig, data: dict) -> None:
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for solver in sorted({r["solver"] for r in data["runs"]}):
        points = sorted((r for r in data["runs"] if r["solver"] == solver), key=lambda r: r["vocab"])
        left.loglog([r["vocab"] for r in points], [r["seconds"] for r in points], "o-", label=solver)
        right.semilogx([r["vocab"] for r in points], [r["cost_vs_reference"] for r in points], "o-", label=solver)
    left.axhline(600, color="grey", ls=":", lw=1, label="10 minutes")
    left.set_xlabel("vocabulary size V")
    left.set_ylabel("solver seconds")
    left.legend(fontsize=8)
    right.set_xlabel("vocabulary size V")
    right.set_ylabel("cost / exact (dense, else sparse) cost")
    right.legend(fontsize=8)


DRAWERS = {"quality_vs_time": (_quality_vs_time, (7, 4.5)), "throughput": (_throughput, (7, 4.5)),
           "lightrnn_vs_softmax": (_lightrnn_vs_softmax, (10, 4.5)), "lightrnn_reallocation": (_reallocation, (10, 4.5))}


def draw(name: str, title: str, data: dict, path: Path) -> None:
    """Draw plot `name` (its kind is the file name up to the dataset) and write it atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = next(k for k in DRAWERS if name.startswith(k))
    drawer, size = DRAWERS[kind]
    fig = plt.figure(figsize=size)
    drawer(fig, data)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, metadata={"Software": None, "nlprnn-data": data_hash(data)})
    plt.close(fig)
    tmp.replace(path)
