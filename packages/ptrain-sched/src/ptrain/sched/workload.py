"""Workload loaders: Pollux workload CSVs, Gavel ``.trace`` files, and a synthetic generator.

Every loader returns ``JobSpec`` rows sorted by submit time with dense ids, and reports a bad row
as ``"<file>:<line>: <what was expected>, got <value>"``.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from ptrain.sched.apps import APPLICATIONS
from ptrain.sched.errors import InputError
from ptrain.sched.types import JobSpec

__all__ = ["POLLUX_COLUMNS", "load_gavel_trace", "load_pollux_csv", "load_workload", "synthetic"]

POLLUX_COLUMNS = ("name", "time", "application", "num_replicas", "batch_size")


def _number(path: Path, line: int, column: str, text: str, *, integer: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(
            f"{path}:{line}: column {column}: expected a number, got {text!r}"
        ) from None
    if not math.isfinite(value) or value < 0 or (integer and value != int(value)):
        kind = "a non-negative integer" if integer else "a non-negative number"
        raise InputError(f"{path}:{line}: column {column}: expected {kind}, got {text!r}")
    return value


def load_pollux_csv(path: str | Path, applications: set[str] | None = None) -> list[JobSpec]:
    """A Pollux workload CSV (``name,time,application,num_replicas,batch_size``).

    Args:
        path: the CSV file.
        applications: the valid application names (default: the six Pollux applications).

    Raises:
        InputError: missing columns, a malformed value or an unknown application (file and line).
    """
    path = Path(path)
    known = set(APPLICATIONS) if applications is None else applications
    with path.open(newline="") as file:
        reader = csv.reader(file)
        header = next(reader, None)
        if header is None:
            raise InputError(f"{path}: empty file, expected header {','.join(POLLUX_COLUMNS)}")
        header = [h.strip() for h in header]
        missing = [c for c in POLLUX_COLUMNS if c not in header]
        if missing:
            raise InputError(
                f"{path}:1: expected columns {','.join(POLLUX_COLUMNS)}, "
                f"missing {','.join(missing)}"
            )
        index = {c: header.index(c) for c in POLLUX_COLUMNS}
        rows = []
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise InputError(
                    f"{path}:{line}: expected {len(header)} fields ({','.join(header)}), "
                    f"got {len(row)}: {','.join(row)!r}"
                )
            cells = {c: row[i].strip() for c, i in index.items()}
            app = cells["application"]
            if app not in known:
                raise InputError(
                    f"{path}:{line}: unknown application {app!r} (expected one of "
                    f"{', '.join(sorted(known))})"
                )
            submit = _number(path, line, "time", cells["time"], integer=False)
            replicas = _number(path, line, "num_replicas", cells["num_replicas"], integer=True)
            batch = _number(path, line, "batch_size", cells["batch_size"], integer=True)
            if replicas < 1 or batch < 1:
                bad = "num_replicas" if replicas < 1 else "batch_size"
                raise InputError(f"{path}:{line}: column {bad}: expected >= 1, got {cells[bad]!r}")
            rows.append(
                (submit, line, cells["name"] or f"job-{line}", app, int(replicas), int(batch))
            )
    if not rows:
        raise InputError(f"{path}: no jobs")
    rows.sort(key=lambda r: (r[0], r[1]))
    return [
        JobSpec(job_id=i, name=name, submit_time=submit, application=app, num_gpus=n, batch_size=b)
        for i, (submit, _, name, app, n, b) in enumerate(rows)
    ]


def load_gavel_trace(path: str | Path, job_types: set[str] | None = None) -> list[JobSpec]:
    """A Gavel physical-cluster ``.trace`` (tab-separated, 10 fields).

    The job's application is its Gavel job type; its work is ``total_steps`` iterations.
    """
    path = Path(path)
    rows = []
    with path.open() as file:
        for line, text in enumerate(file, start=1):
            if not text.strip():
                continue
            fields = text.rstrip("\n").split("\t")
            if len(fields) != 10:
                raise InputError(
                    f"{path}:{line}: expected 10 tab-separated fields (job_type, command, "
                    f"working_directory, num_steps_arg, needs_data_dir, total_steps, scale_factor, "
                    f"priority_weight, SLO, arrival_time), got {len(fields)}"
                )
            job_type = fields[0]
            if job_types is not None and job_type not in job_types:
                raise InputError(
                    f"{path}:{line}: job type {job_type!r} not in the throughput table"
                )
            steps = _number(path, line, "total_steps", fields[5], integer=False)
            scale = _number(path, line, "scale_factor", fields[6], integer=True)
            arrival = _number(path, line, "arrival_time", fields[9], integer=False)
            rows.append((arrival, line, job_type, int(max(scale, 1)), steps))
    if not rows:
        raise InputError(f"{path}: no jobs")
    rows.sort(key=lambda r: (r[0], r[1]))
    specs = []
    for i, (arrival, _, job_type, scale, steps) in enumerate(rows):
        batch = 1
        if "batch size " in job_type:
            batch = int(job_type.rsplit("batch size ", 1)[1].rstrip(")"))
        specs.append(
            JobSpec(
                job_id=i,
                name=f"{job_type.split(' (')[0]}-{i}",
                submit_time=arrival,
                application=job_type,
                num_gpus=scale,
                batch_size=batch,
                work=steps,
            )
        )
    return specs


def load_workload(path: str | Path) -> list[JobSpec]:
    """Dispatches on the extension: ``.trace`` → Gavel, anything else → Pollux CSV."""
    path = Path(path)
    if path.suffix == ".trace":
        return load_gavel_trace(path)
    return load_pollux_csv(path)


# Pollux's 1.0x job mix (counts over the seven shared workloads) and typical requests.
_MIX = {
    "cifar10": (430, [(6, 2048), (8, 2048), (12, 4096), (16, 4096)]),
    "ncf": (448, [(1, 32768)]),
    "deepspeech2": (94, [(6, 320), (8, 320), (12, 640)]),
    "bert": (74, [(8, 384), (12, 384), (16, 384)]),
    "yolov3": (51, [(4, 64)]),
    "imagenet": (23, [(24, 3200), (32, 6400)]),
}


def synthetic(
    num_jobs: int,
    *,
    duration: float = 8 * 3600.0,
    seed: int = 0,
    applications: tuple[str, ...] | None = None,
    max_gpus: int | None = None,
) -> list[JobSpec]:
    """A Poisson-arrival workload with Pollux's 1.0x application mix and typical requests.

    Args:
        num_jobs: how many jobs.
        duration: arrivals spread uniformly over ``[0, duration)`` seconds.
        seed: the generator seed.
        applications: restrict to these applications (default: all six).
        max_gpus: clip requests to this many GPUs.
    """
    if num_jobs < 1:
        raise ValueError(f"num_jobs must be >= 1, got {num_jobs}")
    rng = np.random.default_rng(seed)
    apps = [a for a in _MIX if applications is None or a in applications]
    if not apps:
        raise ValueError(f"no known application in {applications}")
    weights = np.array([_MIX[a][0] for a in apps], dtype=float)
    chosen = rng.choice(len(apps), size=num_jobs, p=weights / weights.sum())
    times = np.sort(rng.uniform(0.0, duration, size=num_jobs))
    specs = []
    for i, (app_index, submit) in enumerate(zip(chosen, times, strict=True)):
        app = apps[int(app_index)]
        requests = _MIX[app][1]
        gpus, batch = requests[int(rng.integers(len(requests)))]
        if max_gpus is not None:
            gpus = min(gpus, max_gpus)
        specs.append(
            JobSpec(
                job_id=i,
                name=f"{app}-{i}",
                submit_time=float(round(submit)),
                application=app,
                num_gpus=gpus,
                batch_size=batch,
            )
        )
    return specs
