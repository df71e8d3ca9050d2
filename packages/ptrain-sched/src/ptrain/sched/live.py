"""The live runner: schedules real torchrun jobs on this machine's CPU or GPU slots.

``serve`` watches a spool directory; ``submit``, ``status`` and ``cancel`` talk to it through
that directory (no network service)::

    SPOOL/submit/<id>.json    job specs waiting to be picked up (``submit`` writes them)
    SPOOL/cancel/<name>       cancellation requests
    SPOOL/status.json         the runner's view, rewritten every tick
    SPOOL/jobs/<name>/        checkpoint.pt, progress.json, log.txt of each job

A job spec is JSON::

    {"name": "mlp-a", "command": ["train.py", "--steps", "40"], "gpus": 1, "batch_size": 32}

``command`` is the torchrun script and its arguments; the runner launches
``python -m torch.distributed.run --standalone --nproc-per-node=N <command>`` (``"launcher":
"python"`` runs ``python <command>`` as one process instead) with the variables documented in
``ptrain.sched.elastic``. Every tick the same ``Policy`` objects as the simulator decide the
allocation over the slots; a job whose slots change is stopped with SIGTERM (it checkpoints and
exits) and relaunched on its new slots; a job that exits with an error or is killed is restarted
from its last checkpoint (at most ``max_restarts`` times).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptrain.sched.elastic import (
    ENV_BATCH_SIZE,
    ENV_CHECKPOINT,
    ENV_PROGRESS,
    ENV_WORLD_SIZE,
    write_text_atomic,
)
from ptrain.sched.errors import InputError
from ptrain.sched.policies import POLICIES, Policy, make_policy
from ptrain.sched.types import Allocation, ClusterSpec, JobSpec, JobView, SchedulerState

__all__ = ["LiveJob", "LiveRunner", "add_commands", "read_status", "run_command", "submit_job"]

_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def parse_job_spec(data: Any, source: str, slots: int | None = None) -> dict[str, Any]:
    """Validates a job spec; errors name ``source`` and the bad field."""
    if not isinstance(data, dict):
        raise InputError(f"{source}: expected a JSON object, got {type(data).__name__}")
    name = data.get("name")
    if not isinstance(name, str) or not name or not set(name) <= _NAME_OK:
        raise InputError(
            f"{source}: field name: expected letters, digits, '-', '_', '.', got {name!r}"
        )
    command = data.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        raise InputError(f"{source}: field command: expected a non-empty list of strings")
    gpus = data.get("gpus", 1)
    if not isinstance(gpus, int) or gpus < 1:
        raise InputError(f"{source}: field gpus: expected a positive integer, got {gpus!r}")
    if slots is not None and gpus > slots:
        raise InputError(
            f"{source}: job {name} asks for {gpus} GPUs/slots but the runner has only {slots}; "
            "rejected"
        )
    batch = data.get("batch_size", 1)
    if not isinstance(batch, int) or batch < 1:
        raise InputError(f"{source}: field batch_size: expected a positive integer, got {batch!r}")
    launcher = data.get("launcher", "torchrun")
    if launcher not in ("torchrun", "python"):
        raise InputError(
            f"{source}: field launcher: expected 'torchrun' or 'python', got {launcher!r}"
        )
    return {
        "name": name,
        "command": command,
        "gpus": gpus,
        "batch_size": batch,
        "launcher": launcher,
        "cwd": data.get("cwd"),
    }


@dataclass
class LiveJob:
    """The runner's record of one job."""

    job_id: int
    spec: dict[str, Any]
    submit_time: float
    state: str = "pending"  # pending, running, stopping, finished, failed, cancelled
    slots: tuple[int, ...] = ()
    batch_size: int = 0
    process: subprocess.Popen[bytes] | None = None
    stop_requested: bool = False
    launches: int = 0
    restarts: int = 0
    crashes: int = 0
    attained: float = 0.0
    last_update: float = 0.0
    finish_time: float | None = None
    history: dict[int, list[float]] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    message: str = ""

    @property
    def name(self) -> str:
        return str(self.spec["name"])


class LiveRunner:
    """Runs jobs from a spool directory under a policy; see the module docstring.

    Args:
        spool: the spool directory (created).
        slots: GPU/CPU slots on this machine.
        policy: a ``Policy`` object or a policy name.
        tick: seconds between scheduling rounds.
        gpu: map slots to ``CUDA_VISIBLE_DEVICES`` (otherwise jobs get CPU slots, gloo).
        max_restarts: restarts after crashes before a job is marked failed.
        seed: seed for named stochastic policies.
    """

    def __init__(
        self,
        spool: str | Path,
        *,
        slots: int,
        policy: Policy | str = "fifo",
        tick: float = 1.0,
        gpu: bool = False,
        max_restarts: int = 3,
        seed: int = 0,
    ) -> None:
        if slots < 1:
            raise InputError(f"--slots must be >= 1, got {slots}")
        self.spool = Path(spool)
        for sub in ("submit", "cancel", "jobs"):
            (self.spool / sub).mkdir(parents=True, exist_ok=True)
        self.cluster = ClusterSpec(nodes=1, gpus_per_node=slots)
        self.policy = make_policy(policy, seed=seed) if isinstance(policy, str) else policy
        self.tick = tick
        self.gpu = gpu
        self.max_restarts = max_restarts
        self.jobs: dict[int, LiveJob] = {}
        self.started = time.monotonic()
        self.rejected: list[dict[str, str]] = []
        self._stopping = False

    # ------------------------------------------------------------------ helpers
    def now(self) -> float:
        return time.monotonic() - self.started

    def job_dir(self, job: LiveJob) -> Path:
        return self.spool / "jobs" / job.name

    def _ingest(self) -> None:
        for path in sorted((self.spool / "submit").glob("*.json")):
            try:
                spec = parse_job_spec(
                    json.loads(path.read_text()), str(path), self.cluster.num_gpus
                )
                if any(j.name == spec["name"] for j in self.jobs.values()):
                    raise InputError(f"{path}: a job named {spec['name']} already exists")
            except (InputError, json.JSONDecodeError) as error:
                self.rejected.append({"file": path.name, "error": str(error)})
                path.unlink(missing_ok=True)
                continue
            job = LiveJob(job_id=len(self.jobs), spec=spec, submit_time=self.now())
            self.jobs[job.job_id] = job
            self.job_dir(job).mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)
        for path in sorted((self.spool / "cancel").iterdir()):
            for job in self.jobs.values():
                if job.name == path.name and job.state in ("pending", "running", "stopping"):
                    self._kill(job)
                    job.process = None
                    job.state = "cancelled"
                    job.slots = ()
                    job.finish_time = self.now()
            path.unlink(missing_ok=True)

    def _read_progress(self, job: LiveJob) -> None:
        path = self.job_dir(job) / "progress.json"
        try:
            progress = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return
        if progress != job.progress and job.slots and progress.get("steps_per_s", 0) > 0:
            measured = job.history.setdefault(len(job.slots), [])
            measured.append(float(progress["steps_per_s"]))
            del measured[:-5]
        job.progress = progress

    def _launch(self, job: LiveJob) -> None:
        spec = job.spec
        n = len(job.slots)
        env = dict(os.environ)
        directory = self.job_dir(job)
        env.update(
            {
                ENV_WORLD_SIZE: str(n),
                ENV_BATCH_SIZE: str(job.batch_size),
                ENV_CHECKPOINT: str(directory / "checkpoint.pt"),
                ENV_PROGRESS: str(directory / "progress.json"),
                "PTRAIN_SCHED_JOB": job.name,
                "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1"),
            }
        )
        if self.gpu:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(s) for s in job.slots)
        if spec["launcher"] == "torchrun":
            argv = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                "--nnodes=1",
                f"--nproc-per-node={n}",
                "--max-restarts=0",
                *spec["command"],
            ]
        else:
            argv = [sys.executable, *spec["command"]]
        log = (directory / "log.txt").open("ab")
        job.process = subprocess.Popen(
            argv,
            env=env,
            cwd=spec.get("cwd") or None,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        job.launches += 1
        job.state = "running"
        job.stop_requested = False

    def _kill(self, job: LiveJob, sig: int = signal.SIGKILL) -> None:
        process = job.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            if sig == signal.SIGKILL:
                process.wait(timeout=30)

    def _poll(self) -> None:
        now = self.now()
        for job in self.jobs.values():
            if job.slots and job.state == "running":
                job.attained += len(job.slots) * (now - job.last_update)
            job.last_update = now
            self._read_progress(job)
            process = job.process
            if process is None or process.poll() is None:
                continue
            code = process.returncode
            job.process = None
            self._read_progress(job)
            if job.progress.get("done"):
                job.state = "finished"
                job.finish_time = now
                job.slots = ()
            elif job.stop_requested:
                job.state = "pending"  # resized or preempted: relaunch on its next slots
                job.slots = ()
            else:
                job.crashes += 1
                if job.crashes > self.max_restarts:
                    job.state = "failed"
                    job.message = f"exit code {code} after {job.crashes} crashes; see log.txt"
                    job.finish_time = now
                else:
                    job.state = "pending"  # restart from its last checkpoint
                    job.message = f"restarting after exit code {code}"
                job.slots = ()

    def _views(self) -> tuple[JobView, ...]:
        views = []
        for job in self.jobs.values():
            if job.state not in ("pending", "running", "stopping"):
                continue
            total = job.progress.get("total_steps")
            spec = JobSpec(
                job_id=job.job_id,
                name=job.name,
                submit_time=job.submit_time,
                application=job.name,
                num_gpus=job.spec["gpus"],
                batch_size=job.spec["batch_size"],
                work=float(total) if total else None,
            )
            step = float(job.progress.get("step", 0))
            views.append(
                JobView(
                    spec=spec,
                    work_done=step,
                    samples_done=step * job.spec["batch_size"],
                    epochs_done=step / total if total else 0.0,
                    attained_service=job.attained,
                    num_gpus=len(job.slots),
                    batch_size=job.batch_size or job.spec["batch_size"],
                    throughput_history={n: tuple(v) for n, v in job.history.items()},
                    epochs_at_last_change=None,
                    ever_ran=job.launches > 0,
                    restarts=job.restarts,
                    model=None,
                )
            )
        return tuple(views)

    def schedule(self) -> Allocation:
        """One scheduling round: decide, then stop/launch the jobs whose slots changed."""
        views = self._views()
        # Jobs still stopping keep their slots until their process exits.
        current = Allocation(
            {
                j.job_id: _assignment(j.slots, j.batch_size or j.spec["batch_size"])
                for j in self.jobs.values()
                if j.slots
            }
        )
        if not views:
            return current
        state = SchedulerState(now=self.now(), cluster=self.cluster, jobs=views, current=current)
        allocation = self.policy.decide(state)
        allocation.validate(self.cluster, {v.job_id for v in views})
        busy = {s for j in self.jobs.values() if j.state == "stopping" for s in j.slots}
        for view in views:
            job = self.jobs[view.job_id]
            target = allocation.slots(job.job_id)
            if job.state == "stopping":
                continue
            if job.state == "running" and tuple(target) != job.slots:
                job.stop_requested = True
                job.state = "stopping"
                job.restarts += 1
                self._kill(job, signal.SIGTERM)
                continue
            if job.state == "pending" and target and not busy & set(target):
                job.slots = tuple(target)
                job.batch_size = allocation.jobs[job.job_id].batch_size
                self._launch(job)
        return allocation

    def status(self) -> dict[str, Any]:
        return {
            "time": self.now(),
            "slots": self.cluster.num_gpus,
            "policy": self.policy.name,
            "jobs": [
                {
                    "name": j.name,
                    "state": j.state,
                    "slots": list(j.slots),
                    "batch_size": j.batch_size,
                    "step": j.progress.get("step", 0),
                    "total_steps": j.progress.get("total_steps"),
                    "launches": j.launches,
                    "restarts": j.restarts,
                    "crashes": j.crashes,
                    "submit_time": j.submit_time,
                    "finish_time": j.finish_time,
                    "message": j.message,
                }
                for j in self.jobs.values()
            ],
            "rejected": self.rejected,
        }

    def step(self) -> None:
        """One tick: ingest submissions/cancels, reap processes, schedule, write status."""
        self._ingest()
        self._poll()
        self.schedule()
        write_text_atomic(self.spool / "status.json", json.dumps(self.status(), indent=1))

    def active(self) -> bool:
        return any(
            j.state in ("pending", "running", "stopping") for j in self.jobs.values()
        ) or any((self.spool / "submit").glob("*.json"))

    def serve(self, *, exit_when_idle: bool = False, timeout: float | None = None) -> int:
        """Runs ticks until interrupted (or, with ``exit_when_idle``, until no job is left).

        Returns:
            0, or 1 when a job failed or the timeout passed.
        """

        def stop(signum: int, frame: Any) -> None:
            self._stopping = True

        previous = signal.signal(signal.SIGTERM, stop)
        try:
            while not self._stopping:
                self.step()
                if exit_when_idle and self.jobs and not self.active():
                    break
                if timeout is not None and self.now() > timeout:
                    self.shutdown()
                    return 1
                time.sleep(self.tick)
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
        self.shutdown()
        return 1 if any(j.state == "failed" for j in self.jobs.values()) else 0

    def shutdown(self) -> None:
        """Kills every job still running and writes the final status."""
        for job in self.jobs.values():
            if job.process is not None:
                self._kill(job)
        write_text_atomic(self.spool / "status.json", json.dumps(self.status(), indent=1))


def _assignment(slots: tuple[int, ...], batch: int) -> Any:
    from ptrain.sched.types import JobAssignment

    return JobAssignment(slots=slots, batch_size=batch)


# ---------------------------------------------------------------------- client side
def submit_job(spool: str | Path, spec_path: str | Path) -> str:
    """Validates a job spec file and drops it into the spool; returns the job name."""
    path = Path(spec_path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
    spec = parse_job_spec(data, str(path))
    target = Path(spool) / "submit" / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.json"
    if not target.parent.is_dir():
        raise InputError(f"{spool}: not a spool directory (no submit/); start ptrain-sched serve")
    write_text_atomic(target, json.dumps(data))
    return str(spec["name"])


def read_status(spool: str | Path) -> dict[str, Any]:
    path = Path(spool) / "status.json"
    if not path.exists():
        raise InputError(f"{path}: no status yet; is ptrain-sched serve running on this spool?")
    return dict(json.loads(path.read_text()))


def add_commands(commands: Any) -> None:
    """Adds serve, submit, status and cancel to the ``ptrain-sched`` parser."""
    serve = commands.add_parser("serve", help="run jobs from a spool directory on local slots")
    serve.add_argument("--spool", required=True, help="spool directory (created)")
    serve.add_argument("--slots", type=int, default=1, help="GPU/CPU slots (1)")
    serve.add_argument("--policy", default="fifo", help=f"one of {', '.join(POLICIES)} (fifo)")
    serve.add_argument("--tick", type=float, default=1.0, help="seconds between rounds (1)")
    serve.add_argument("--gpu", action="store_true", help="slots are CUDA devices")
    serve.add_argument("--seed", type=int, default=0, help="policy seed (0)")
    serve.add_argument(
        "--max-restarts", type=int, default=3, help="restarts of a crashed job before it fails (3)"
    )
    serve.add_argument(
        "--exit-when-idle", action="store_true", help="exit once every submitted job has ended"
    )
    serve.add_argument("--timeout", type=float, default=None, help="give up after this many s")
    submit = commands.add_parser("submit", help="submit a job spec (JSON) to a running serve")
    submit.add_argument("--spool", required=True)
    submit.add_argument("spec", help="job spec JSON file")
    status = commands.add_parser("status", help="print the jobs of a running serve")
    status.add_argument("--spool", required=True)
    status.add_argument("--json", action="store_true", help="print the raw status JSON")
    cancel = commands.add_parser("cancel", help="cancel a job by name")
    cancel.add_argument("--spool", required=True)
    cancel.add_argument("name")


def run_command(args: argparse.Namespace) -> int:
    if args.command == "serve":
        if args.policy not in POLICIES:
            raise InputError(
                f"unknown policy {args.policy!r}; valid policies: {', '.join(POLICIES)}"
            )
        runner = LiveRunner(
            args.spool,
            slots=args.slots,
            policy=args.policy,
            tick=args.tick,
            gpu=args.gpu,
            max_restarts=args.max_restarts,
            seed=args.seed,
        )
        return runner.serve(exit_when_idle=args.exit_when_idle, timeout=args.timeout)
    if args.command == "submit":
        print(f"submitted {submit_job(args.spool, args.spec)}")
        return 0
    if args.command == "status":
        status = read_status(args.spool)
        if args.json:
            print(json.dumps(status, indent=1))
            return 0
        print(f"{status['policy']} on {status['slots']} slots, t={status['time']:.0f} s")
        for job in status["jobs"]:
            total = job["total_steps"] or "?"
            print(
                f"  {job['name']:20s} {job['state']:9s} slots={job['slots']} "
                f"step {job['step']}/{total} launches={job['launches']} {job['message']}"
            )
        for bad in status["rejected"]:
            print(f"  rejected {bad['file']}: {bad['error']}")
        return 0
    if args.command == "cancel":
        directory = Path(args.spool) / "cancel"
        if not directory.is_dir():
            raise InputError(f"{args.spool}: not a spool directory (no cancel/)")
        write_text_atomic(directory / args.name, "")
        print(f"cancel requested for {args.name}")
        return 0
    raise InputError(f"unknown command {args.command!r}")
