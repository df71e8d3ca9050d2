"""Summary tables and the Gantt chart of GPU allocation over time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ptrain.sched.errors import InputError

__all__ = ["format_table", "plot_gantt"]

_COLUMNS = (
    ("policy", "policy", "{}"),
    ("avg_jct", "avg JCT s", "{:.0f}"),
    ("median_jct", "median", "{:.0f}"),
    ("p90_jct", "p90", "{:.0f}"),
    ("p99_jct", "p99", "{:.0f}"),
    ("makespan", "makespan", "{:.0f}"),
    ("avg_queueing_delay", "queue", "{:.0f}"),
    ("gpu_util_allocated", "util", "{:.2f}"),
    ("gpu_util_effective", "eff util", "{:.2f}"),
    ("reconfigurations_per_job", "reconf/job", "{:.2f}"),
    ("decide_latency_ms_median", "decide ms", "{:.2f}"),
    ("decide_latency_ms_p99", "p99 ms", "{:.2f}"),
)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table of run summaries (one row per policy/run)."""
    header = [title for _, title, _ in _COLUMNS]
    body = []
    for row in rows:
        body.append([fmt.format(row[key]) if key in row else "-" for key, _, fmt in _COLUMNS])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def plot_gantt(
    timeline: Sequence[tuple[int, float, float, int, int]],
    path: str | Path,
    *,
    num_gpus: int,
    title: str = "",
) -> None:
    """Writes a stacked chart of GPUs held per job over time (matplotlib, the ``plot`` extra).

    Args:
        timeline: (job id, start, end, GPUs, batch) segments.
        path: the image file (format from its extension).
        num_gpus: the cluster size (the y-axis limit).
        title: the chart title.

    Raises:
        InputError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'ptrain-sched[plot]'") from None
    import numpy as np

    if not timeline:
        raise InputError("nothing to plot: no job ever held a GPU")
    times = sorted({t for _, s, e, _, _ in timeline for t in (s, e)})
    jobs = sorted({j for j, *_ in timeline})
    grid = np.zeros((len(jobs), len(times)))
    index = {j: i for i, j in enumerate(jobs)}
    position = {t: i for i, t in enumerate(times)}
    for job, start, end, gpus, _ in timeline:
        grid[index[job], position[start] : position[end]] += gpus
    figure, axis = plt.subplots(figsize=(11, 4.5))
    colours = plt.get_cmap("tab20")
    axis.stackplot(
        np.array(times) / 3600.0,
        grid,
        step="post",
        colors=[colours(i % 20) for i in range(len(jobs))],
        linewidth=0,
    )
    axis.set_xlabel("time (h)")
    axis.set_ylabel("GPUs allocated")
    axis.set_ylim(0, num_gpus)
    axis.set_title(title or "GPU allocation over time (one colour band per job)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
