"""Ground-truth job models: how fast a job progresses on n GPUs at global batch B.

``PolluxApplication`` is built from the Pollux (OSDI'21) application tables shipped as package data
(``ptrain/sched/data/pollux/<app>/``, Apache-2.0, see ``NOTICE.md`` there):

* throughput: ``placements.csv`` and ``scalability.csv`` give seconds per iteration and the part
  spent in gradient synchronisation for (nodes, GPUs, local batch). We fit, by least squares,
  ``T_compute(l) = a + b·l`` (step time minus sync time) and ``T_sync(n) = c + d·n`` separately for
  one node and for several nodes; an iteration with ``k`` accumulation steps takes
  ``(k+1)·T_compute(l) + T_sync`` (Pollux's ``PerfParams`` with γ = 1).
* statistical efficiency: ``validation-<B0>.csv`` at the smallest batch B0 gives gradient
  statistics along training; one iteration at batch B makes
  ``gain = (var + sqr) / (var/s + sqr)``, ``s = B/B0``, units of progress (initial-batch
  iterations), so a larger batch needs fewer iterations but not proportionally fewer.
* total work: the progress after the last epoch of ``validation-<B0>.csv`` (``max_epochs`` of
  Pollux's ``applications.py``: bert 2, cifar10 100, ncf 10, imagenet 90, deepspeech2 80,
  yolov3 50); a job finishes when its progress reaches it.

``GavelJobModel`` serves Gavel ``.trace`` jobs from ``simulation_throughputs.json`` (V100,
isolated throughput per scale factor, fixed batch, no statistical-efficiency effect).
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np

from ptrain.sched.errors import InputError

__all__ = [
    "APPLICATIONS",
    "GavelJobModel",
    "JobModel",
    "PolluxApplication",
    "Rate",
    "load_applications",
]

APPLICATIONS = ("bert", "cifar10", "deepspeech2", "imagenet", "ncf", "yolov3")
MAX_EPOCHS = {"bert": 2, "cifar10": 100, "ncf": 10, "imagenet": 90, "deepspeech2": 80, "yolov3": 50}
MAX_LOCAL_BATCH = {"yolov3": 8}  # Pollux's applications.py overrides the table's maximum


@dataclass(frozen=True, slots=True)
class Rate:
    """Speed of a job under one configuration."""

    progress_per_s: float
    samples_per_s: float
    local_batch: int
    accum_steps: int
    batch_size: int
    step_time: float


class JobModel(Protocol):
    """What the simulator and the model-aware policies need to know about an application."""

    name: str
    min_batch: int
    max_batch: int
    max_local_batch: int
    total_work: float
    dataset_size: float

    def rate(
        self,
        num_gpus: int,
        num_nodes: int,
        batch_size: int,
        work_done: float,
        placement: tuple[int, ...] | None = None,
    ) -> Rate:
        """Speed on ``num_gpus`` GPUs over ``num_nodes`` nodes at global ``batch_size``."""
        ...

    def best_batch(self, num_gpus: int, num_nodes: int, work_done: float) -> int:
        """The global batch with the highest goodput (progress/s) on that placement."""
        ...

    def clamp_batch(self, batch_size: int) -> int:
        """``batch_size`` clipped to what the model supports."""
        ...


def _read_rows(path: Path | resources.abc.Traversable, columns: tuple[str, ...]) -> np.ndarray:
    """A float array (rows × len(columns)); errors name the file and line."""
    text = path.read_text()
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{path}: empty file, expected header {','.join(columns)}") from None
    try:
        index = [header.index(column) for column in columns]
    except ValueError:
        raise InputError(
            f"{path}:1: expected columns {','.join(columns)}, got {','.join(header)}"
        ) from None
    rows = []
    for line, row in enumerate(reader, start=2):
        if not row:
            continue
        try:
            rows.append([float(row[i]) for i in index])
        except (ValueError, IndexError):
            raise InputError(f"{path}:{line}: expected numbers in {columns}, got {row}") from None
    return np.asarray(rows, dtype=np.float64).reshape(-1, len(columns))


def _placement_shape(text: str) -> tuple[int, int]:
    """``"22"`` → (2 nodes, 4 GPUs)."""
    digits = [int(ch) for ch in text.strip()]
    return len(digits), sum(digits)


class PolluxApplication:
    """One Pollux application's throughput and statistical-efficiency model (see module doc)."""

    def __init__(self, name: str, directory: Path | resources.abc.Traversable) -> None:
        self.name = name
        files = {entry.name: entry for entry in directory.iterdir()}
        if "placements.csv" not in files:
            raise InputError(f"{directory}: no placements.csv for application {name}")
        # Throughput measurements from both tables: (nodes, gpus, local_bsz, step, sync).
        placements_text = files["placements.csv"].read_text().splitlines()
        measurements = []
        for line, row in enumerate(csv.reader(placements_text[1:]), start=2):
            if not row:
                continue
            try:
                nodes, gpus = _placement_shape(row[0])
                measurements.append([nodes, gpus, float(row[1]), float(row[2]), float(row[3])])
            except (ValueError, IndexError):
                raise InputError(
                    f"{files['placements.csv']}:{line}: expected "
                    f"placement,local_bsz,step_time,sync_time, got {row}"
                ) from None
        if "scalability.csv" in files:
            extra = _read_rows(
                files["scalability.csv"],
                ("num_nodes", "num_replicas", "local_bsz", "step_time", "sync_time"),
            )
            measurements.extend(extra.tolist())
        # Exact measurements per placement, used when the placement was measured.
        self.placement_table: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        grouped: dict[tuple[int, ...], list[tuple[float, float, float]]] = {}
        for text_row in placements_text[1:]:
            cells = text_row.split(",")
            if len(cells) >= 4 and cells[0].strip().isdigit():
                key = tuple(int(ch) for ch in cells[0].strip())
                grouped.setdefault(key, []).append(
                    (float(cells[1]), float(cells[2]), float(cells[3]))
                )
        for key, rows in grouped.items():
            table = np.array(sorted(rows))
            self.placement_table[key] = (table[:, 0], table[:, 1], table[:, 2])
        data = np.asarray(measurements, dtype=np.float64)
        nodes, gpus, local, step, sync = data.T
        compute = np.maximum(step - np.where(gpus > 1, sync, 0.0), 1e-6)
        self.compute_coef = np.linalg.lstsq(
            np.stack([np.ones_like(local), local], axis=1), compute, rcond=None
        )[0]
        self.compute_coef = np.maximum(self.compute_coef, [1e-5, 1e-9])
        self.sync_coef: dict[bool, np.ndarray] = {}
        for multi_node in (False, True):
            mask = (gpus > 1) & ((nodes > 1) == multi_node)
            if mask.sum() >= 2:
                coef = np.linalg.lstsq(
                    np.stack([np.ones(mask.sum()), gpus[mask]], axis=1), sync[mask], rcond=None
                )[0]
            else:
                coef = np.array([float(sync[gpus > 1].mean()) if (gpus > 1).any() else 0.0, 0.0])
            self.sync_coef[multi_node] = np.maximum(coef, [1e-5, 0.0])
        self.max_local_batch = MAX_LOCAL_BATCH.get(name, int(local.max()))
        self.min_local_batch = int(local.min())
        # Statistical efficiency and total work from the validation tables.
        batches = sorted(
            int(m.group(1))
            for n in files
            if (m := re.fullmatch(r"validation-(\d+)\.csv", n)) is not None
        )
        if not batches:
            raise InputError(f"{directory}: no validation-<B>.csv for application {name}")
        self.min_batch = batches[0]
        self.max_batch = batches[-1]
        curves = [
            _read_rows(
                files[f"validation-{b}.csv"],
                ("progress", "iteration", "metric", "grad_sqr", "grad_var"),
            )
            for b in batches
        ]
        self.max_epochs = MAX_EPOCHS.get(name, min(len(c) for c in curves))
        epochs = self.max_epochs
        self.validated_batches = np.array(batches, dtype=np.float64)
        # Progress at the end of each epoch: the smallest over batch sizes (as Pollux).
        self.epoch_progress = np.min([c[:epochs, 0] for c in curves], axis=0)
        self.grad_sqr = np.stack([c[:epochs, 3] for c in curves])  # (batch sizes, epochs)
        self.grad_var = np.stack([c[:epochs, 4] for c in curves])
        self.total_work = float(self.epoch_progress[-1])
        self.dataset_size = self.min_batch * self.total_work / self.max_epochs
        self._best_cache: dict[tuple[int, int, int], int] = {}

    def __repr__(self) -> str:
        return f"PolluxApplication({self.name!r}, B0={self.min_batch}, work={self.total_work:.0f})"

    # ------------------------------------------------------------------ pieces
    def clamp_batch(self, batch_size: int) -> int:
        return int(min(max(batch_size, self.min_batch), self.max_batch))

    def gain(self, batch_size: float, work_done: float) -> float:
        """Progress (initial-batch iterations) made by one iteration at ``batch_size``.

        Gradient statistics of the current epoch, interpolated linearly between the two
        validated batch sizes around ``batch_size`` (clipped to the validated range).
        """
        epoch = min(
            int(np.searchsorted(self.epoch_progress, work_done, side="right")), self.max_epochs - 1
        )
        b = min(max(float(batch_size), self.validated_batches[0]), self.validated_batches[-1])
        sqr = float(np.interp(b, self.validated_batches, self.grad_sqr[:, epoch]))
        var = float(np.interp(b, self.validated_batches, self.grad_var[:, epoch]))
        scale = batch_size / self.min_batch
        return (var + sqr) / (var / scale + sqr)

    def split_batch(self, num_gpus: int, batch_size: int) -> tuple[int, int]:
        """(local batch, accumulation steps) for a global batch on ``num_gpus``."""
        local = max(math.ceil(batch_size / num_gpus), 1)
        accum = 0
        if local > self.max_local_batch:
            accum = math.ceil(local / self.max_local_batch) - 1
            local = max(math.ceil(batch_size / (num_gpus * (accum + 1))), 1)
        return local, accum

    def step_time(
        self,
        num_gpus: int,
        num_nodes: int,
        local: float,
        accum: int,
        placement: tuple[int, ...] | None = None,
    ) -> float:
        """Seconds per iteration; measured placements are interpolated, others use the fit."""
        if placement is not None:
            counts = tuple(c for c in placement if c > 0)
            key = min(counts[i:] + counts[:i] for i in range(len(counts)))
            table = self.placement_table.get(key)
            if table is not None and table[0][0] <= local <= table[0][-1]:
                step = float(np.interp(local, table[0], table[1]))
                sync = float(np.interp(local, table[0], table[2]))
                return step + accum * (step - sync)
        compute = self.compute_coef[0] + self.compute_coef[1] * local
        sync = 0.0
        if num_gpus > 1:
            coef = self.sync_coef[num_nodes > 1]
            sync = coef[0] + coef[1] * num_gpus
        return float((accum + 1) * compute + sync)

    # ------------------------------------------------------------------ JobModel
    def rate(
        self,
        num_gpus: int,
        num_nodes: int,
        batch_size: int,
        work_done: float,
        placement: tuple[int, ...] | None = None,
    ) -> Rate:
        if num_gpus < 1:
            return Rate(0.0, 0.0, 0, 0, batch_size, math.inf)
        local, accum = self.split_batch(num_gpus, batch_size)
        actual = num_gpus * local * (accum + 1)
        step = self.step_time(num_gpus, max(num_nodes, 1), local, accum, placement)
        return Rate(
            progress_per_s=self.gain(actual, work_done) / step,
            samples_per_s=actual / step,
            local_batch=local,
            accum_steps=accum,
            batch_size=actual,
            step_time=step,
        )

    def best_batch(self, num_gpus: int, num_nodes: int, work_done: float) -> int:
        bucket = int(20 * min(work_done / self.total_work, 1.0))
        key = (num_gpus, num_nodes, bucket)
        cached = self._best_cache.get(key)
        if cached is not None:
            return cached
        low = max(self.min_batch, num_gpus * self.min_local_batch // 2, 1)
        high = max(low, self.max_batch)
        candidates = np.unique(np.geomspace(low, high, 24).round().astype(int))
        work = self.total_work * bucket / 20
        best = max(
            candidates.tolist(),
            key=lambda b: self.rate(num_gpus, num_nodes, int(b), work).progress_per_s,
        )
        self._best_cache[key] = int(best)
        return int(best)


class GavelJobModel:
    """A Gavel job type: fixed batch, iterations/s per GPU count from Gavel's V100 table."""

    def __init__(self, name: str, throughputs: dict[int, float], total_steps: float) -> None:
        match = re.search(r"batch size (\d+)", name)
        batch = int(match.group(1)) if match else 1
        self.name = name
        self.min_batch = self.max_batch = self.max_local_batch = batch
        self.total_work = float(total_steps)
        self.dataset_size = batch * max(total_steps / 10.0, 1.0)  # assumption: 10 epochs
        sizes = sorted(throughputs)
        self._sizes = np.array([0.0, *sizes])
        self._rates = np.array([0.0, *(throughputs[s] for s in sizes)])

    def clamp_batch(self, batch_size: int) -> int:
        return self.min_batch

    def rate(
        self,
        num_gpus: int,
        num_nodes: int,
        batch_size: int,
        work_done: float,
        placement: tuple[int, ...] | None = None,
    ) -> Rate:
        if num_gpus < 1:
            return Rate(0.0, 0.0, 0, 0, self.min_batch, math.inf)
        if num_gpus <= self._sizes[-1]:
            steps = float(np.interp(num_gpus, self._sizes, self._rates))
        else:  # beyond the table: the largest measured per-GPU rate, linearly
            steps = float(self._rates[-1] * num_gpus / self._sizes[-1])
        steps = max(steps, 1e-9)
        return Rate(steps, steps * self.min_batch, self.min_batch, 0, self.min_batch, 1.0 / steps)

    def best_batch(self, num_gpus: int, num_nodes: int, work_done: float) -> int:
        return self.min_batch


def _default_tables() -> resources.abc.Traversable:
    return resources.files("ptrain.sched") / "data" / "pollux"


@functools.cache
def _load_cached(directory: str | None) -> dict[str, PolluxApplication]:
    root: Path | resources.abc.Traversable = (
        _default_tables() if directory is None else Path(directory)
    )
    if isinstance(root, Path) and not root.is_dir():
        raise InputError(f"--traces {root}: not a directory")
    # Accept both the package layout (<root>/<app>/) and the Pollux one (<root>/traces/<app>/).
    if isinstance(root, Path) and (root / "traces").is_dir():
        root = root / "traces"
    apps = {}
    for entry in root.iterdir():
        if entry.is_dir() and entry.name in APPLICATIONS:
            apps[entry.name] = PolluxApplication(entry.name, entry)
    if not apps:
        raise InputError(
            f"{root}: no application tables (expected folders {', '.join(APPLICATIONS)})"
        )
    return apps


def load_applications(directory: str | Path | None = None) -> dict[str, PolluxApplication]:
    """The Pollux application models, from the package data or ``directory`` (``--traces``)."""
    return _load_cached(None if directory is None else str(Path(directory).resolve()))


def load_gavel_throughputs(path: str | Path, gpu_type: str = "v100") -> dict[str, dict[int, float]]:
    """Gavel ``simulation_throughputs.json`` → job type → {scale factor: isolated iterations/s}."""
    data = json.loads(Path(path).read_text())
    if gpu_type not in data:
        raise InputError(f"{path}: no GPU type {gpu_type!r} (have {', '.join(sorted(data))})")
    table: dict[str, dict[int, float]] = {}
    for key, entry in data[gpu_type].items():
        match = re.fullmatch(r"\('(.+)', (\d+)\)", key)
        if match is None or not isinstance(entry, dict) or entry.get("null") is None:
            continue
        table.setdefault(match.group(1), {})[int(match.group(2))] = float(entry["null"])
    return table
