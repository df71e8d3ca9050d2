"""ONES: an online evolutionary search over GPU slots, with batch size tied to the GPU count.

Two presets (``ONES_VARIANTS``; every knob is also a field):

* ``"jct"`` (the default) keeps ONES's search — a persistent population of K = 16 slot vectors,
  uniform crossover, job-removal mutation, greedy padding, (μ+λ) selection, one generation per
  decision — and its stated goal, minimising predicted completion time, but changes what the
  artifact does where that goal is lost on Pollux-size jobs:
  - fitness ``"jct"``: maximise the predicted job-completion rate Σ_j 1/T_j(n_j), with
    T_j(n) = R_j / rate on n GPUs, plus ``restart_weight × restart_penalty + restart_relative ×
    R_j / rate`` when n differs from the GPUs the job holds (a start or resize restarts it;
    R_j = predicted remaining work; defaults 20 × 30 s and 10%; starting a waiting job is
    charged ``start_weight × restart_penalty``, default 80 × 30 s). This is SRTF
    generalised to elastic jobs: a GPU goes where it shortens a short job most, and a job is
    only moved when the gain outweighs the (weighted) restart cost — hysteresis against the
    churn that a GPU-time fitness causes (the artifact's fitness is also 0 for unallocated jobs,
    so it prefers preempting known jobs);
  - ``seed_greedy``: two greedy individuals (from scratch and extending the current allocation,
    each GPU to the largest fitness drop per GPU) join every generation's candidates, so the
    population never does worse than the greedy heuristic;
  - ``growth="none"``: no slow start (the artifact doubles a job's cap every 2 epochs, which is
    hours with full-size datasets); a job's cap is 4× its request, trimmed to the GPU count of its
    highest rate;
  - ``rates="model"`` and ``batch_rule="goodput"``: rates and the batch size per GPU count come
    from the job model (throughput × statistical efficiency at the batch that maximises it, as
    Pollux does) instead of the online table and the linear LR rule; in the live runner, without
    a job model, both fall back to the artifact's table and rule;
  - mean predictions instead of Beta samples and no epoch update guard (the restart cost in the
    fitness replaces it).
* ``"artifact"``: the ONES artifact (``kurisusnowdeng/ones_sc21`` @ 8535358, unlicensed, no code
  copied) as described in ``design/ptrain-sched.md`` §2.2–2.6:

* a chromosome is a vector over the cluster's GPU slots holding a job id or -1 (free);
* a population of K = 16 chromosomes persists across decisions (warm start); each generation
  makes K children by uniform per-slot crossover (ξ = 0.5, a gene kept only while the child is
  below the job's cap) and K mutants (each job removed entirely with probability θ = 0.3, jobs
  with fewer than 2 epochs protected), pads all 3K candidates greedily (new jobs one GPU each in
  arrival order, then known jobs by ascending predicted remaining time on one GPU up to their
  current size, then up to their caps), and keeps the K best ((μ+λ) truncation);
* fitness (lower is better) = Σ_j n_j · remaining_work_j / x_j(n_j): the total predicted
  remaining GPU-time, x_j from the online throughput table (mean of the last 5 measurements per
  GPU count, linear inter/extrapolation through (0, 0)); jobs without a prediction add 0;
* growth limits: a job's cap starts at 1 GPU and doubles every 2 epochs while it runs at its cap
  (at most 4× its request and the cluster); the largest job, when it holds half the cluster and
  has run longer than the median job, is capped to ``max(int(2·n/(f·t/median + 1)), 1)`` rounded
  up to even; a preempted job resumes at half its previous size;
* a change to a running job applies only once it has run 1 epoch since its last change (others
  wait; starts on free GPUs always apply);
* batch size: per-GPU batch ``b = request_batch / request_gpus``; on n GPUs the global batch is
  ``n·b`` while ``n ≤ R`` (R = max_lr/base_lr, 16 in the artifact for CIFAR/ImageNet), else
  ``n·(int(b·R) // n)`` (linear LR scaling up to the cap).

Progress predictor (the artifact's Beta regression needs its unlicensed job history): by default
``"history"``: the total work of a job is predicted as the mean total work of finished jobs of
the same application (learned online, like the artifact's refit on every completion); before one
has finished, the job is assumed half done. The predicted fraction done ρ̂ becomes a Beta(a, b)
sample with ``a`` = epochs done and mean ρ̂ (the artifact samples its Beta too); remaining work =
``y·(1/ρ − 1)``. ``"oracle"`` uses the simulator's true remaining work.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptrain.sched.policies.base import online_table, packed_nodes, place
from ptrain.sched.types import Allocation, JobAssignment, JobView, SchedulerState

__all__ = ["ONES_VARIANTS", "OnesPolicy", "ones_batch_size"]

_FORBIDDEN = 1e12  # fitness of a count the update guard rules out

ONES_VARIANTS: dict[str, dict[str, object]] = {
    # The default: the paper's objective (predicted completion) with restart costs, greedy
    # seeding, goodput batch sizes and no slow start (see the class docstring and README).
    "jct": {},
    # The ONES artifact as described in design/ptrain-sched.md §2.2–2.6.
    "artifact": {
        "fitness": "gpu-time",
        "growth": "epochs",
        "rates": "table",
        "batch_rule": "linear",
        "update_guard": "global",
        "seed_greedy": False,
        "sample_prediction": True,
        "restart_weight": 1.0,
        "restart_relative": 0.0,
    },
}


def ones_batch_size(job: JobView, num_gpus: int, lr_scale_cap: float) -> int:
    """ONES's global batch on ``num_gpus`` GPUs (linear scaling with LR, capped; see module)."""
    per_gpu = max(job.spec.batch_size // job.spec.num_gpus, 1)
    if num_gpus <= lr_scale_cap:
        batch = num_gpus * per_gpu
    else:
        batch = num_gpus * max(int(per_gpu * lr_scale_cap) // num_gpus, 1)
    if job.model is not None:  # the application's largest supported batch
        batch = min(batch, max(job.model.max_batch, num_gpus))
    return int(batch)


@dataclass
class OnesPolicy:
    """The ONES scheduler; see the module docstring for the algorithm and the knobs.

    Attributes:
        population_size: K.
        crossover_probability: ξ, per-slot swap probability.
        mutation_rate: θ, per-job removal probability.
        generations_per_decision: generations run per ``decide`` call.
        epochs_before_scaling: epochs a job is protected / between cap doublings.
        update_interval_epochs: epochs a running job must run between changes.
        scale_down_factor: f in the biggest-job cap (1.0 in effect at the artifact's HEAD).
        scale_down: apply the artifact's biggest-job cap at all.
        max_request_factor: a job may grow to this many times its requested GPUs.
        lr_scale_cap: max_lr / base_lr.
        epoch_samples: samples per ONES "epoch" (None: the job's dataset size). The artifact's
            jobs used sub-sampled datasets of 3.6k–40k samples; set this to reproduce that
            pace of growth on full-size datasets.
        predictor: ``"history"`` or ``"oracle"``.
        sample_prediction: draw ρ from the Beta (artifact) instead of using its mean.
        update_guard: ``"global"`` (artifact): if any running job that would change has not
            run ``update_interval_epochs`` since its last change, only starts on free GPUs
            apply; ``"per-job"``: only those jobs keep their GPUs, the rest of the best
            allocation applies; ``"time"``: a running job changed less than
            ``update_interval_seconds`` ago keeps its GPUs (enforced in the fitness, so the rest
            is optimised around it); ``"none"``: the best individual always applies.
        update_interval_seconds: the ``"time"`` guard's interval.
        fitness: ``"jct"`` (completion rate with restart cost) or ``"gpu-time"`` (artifact).
        growth: ``"none"`` (cap = 4× request at once) or ``"epochs"`` (artifact slow start).
        rates: ``"model"`` (job model, when there is one) or ``"table"`` (online table).
        batch_rule: ``"goodput"`` (the job model's best batch for the GPUs, when there is a
            model) or ``"linear"`` (artifact: linear LR scaling up to ``lr_scale_cap``).
        seed_greedy: add the two greedy individuals to every generation.
        restart_penalty: seconds a restart costs (the simulator's; ``make_policy`` passes it).
        restart_weight: the jct fitness charges ``restart_weight × restart_penalty`` per
            change (20: a move must be worth ten minutes; chosen on seed 100, see README).
        jct_exponent: q in the jct fitness −Σ_j T_j^(−q) (1: completion rate).
        start_weight: the jct fitness charges ``start_weight × restart_penalty`` for starting
            a job that holds no GPUs (80: a waiting job displaces running ones only for a
            large gain; chosen on seed 100, see README).
        restart_relative: the jct fitness also charges this fraction of a job's predicted
            remaining time per change (0.1: a long job moves only for a >10% gain, which stops
            the leftover-GPU churn of long jobs; chosen on seed 100, see README).
        prior_seconds: jct fitness, history predictor: a job of an application with no
            finished job yet is assumed to need ``max(unknown_factor × work done,
            prior_seconds on 1 GPU)`` more.
        unknown_factor: see ``prior_seconds`` (1: "half done", as the artifact's fallback).
        seed: the generator seed.
    """

    population_size: int = 16
    crossover_probability: float = 0.5
    mutation_rate: float = 0.3
    generations_per_decision: int = 1
    epochs_before_scaling: float = 2.0
    update_interval_epochs: float = 1.0
    scale_down_factor: float = 1.0
    scale_down: bool = True
    max_request_factor: int = 4
    lr_scale_cap: float = 16.0
    epoch_samples: float | None = None
    predictor: str = "history"
    sample_prediction: bool = False
    update_guard: str = "none"
    update_interval_seconds: float = 600.0
    fitness: str = "jct"
    growth: str = "none"
    rates: str = "model"
    batch_rule: str = "goodput"
    seed_greedy: bool = True
    restart_penalty: float = 30.0
    restart_weight: float = 20.0
    jct_exponent: float = 1.0
    restart_relative: float = 0.1
    start_weight: float = 80.0
    prior_seconds: float = 3600.0
    unknown_factor: float = 1.0
    seed: int = 0
    name: str = "ones"
    _rng: np.random.Generator = field(init=False, repr=False)
    _population: np.ndarray | None = field(default=None, init=False, repr=False)
    _caps: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _cap_epoch: dict[int, float] = field(default_factory=dict, init=False, repr=False)
    _pending: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _first_start: dict[int, float] = field(default_factory=dict, init=False, repr=False)
    _last_gpus: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _changed_at: dict[int, float] = field(default_factory=dict, init=False, repr=False)
    _table_cache: dict[tuple[object, ...], np.ndarray] = field(
        default_factory=dict, init=False, repr=False
    )
    _model_cache: dict[tuple[object, ...], tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False
    )

    @classmethod
    def from_variant(cls, variant: str = "jct", **overrides: Any) -> OnesPolicy:
        """A policy from a preset of ``ONES_VARIANTS`` (``"jct"`` or ``"artifact"``) with
        individual fields overridden."""
        if variant not in ONES_VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(ONES_VARIANTS)}, got {variant!r}")
        return cls(**{**ONES_VARIANTS[variant], **overrides})

    def __post_init__(self) -> None:
        if self.population_size < 2 or self.population_size % 2:
            raise ValueError(f"population_size must be even and >= 2, got {self.population_size}")
        for name in ("crossover_probability", "mutation_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.generations_per_decision < 0:
            raise ValueError(
                f"generations_per_decision must be >= 0, got {self.generations_per_decision}"
            )
        if self.predictor not in ("history", "oracle"):
            raise ValueError(f"predictor must be 'history' or 'oracle', got {self.predictor!r}")
        choices = {
            "update_guard": ("global", "per-job", "time", "none"),
            "fitness": ("gpu-time", "jct"),
            "growth": ("epochs", "none"),
            "rates": ("table", "model"),
            "batch_rule": ("linear", "goodput"),
        }
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise ValueError(
                    f"{name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}"
                )
        if self.update_interval_seconds < 0:
            raise ValueError(
                f"update_interval_seconds must be >= 0, got {self.update_interval_seconds}"
            )
        if self.start_weight < 0:
            raise ValueError(f"start_weight must be >= 0, got {self.start_weight}")
        if self.restart_weight < 0:
            raise ValueError(f"restart_weight must be >= 0, got {self.restart_weight}")
        if self.restart_penalty < 0:
            raise ValueError(f"restart_penalty must be >= 0, got {self.restart_penalty}")
        if not self.prior_seconds > 0:
            raise ValueError(f"prior_seconds must be > 0, got {self.prior_seconds}")
        if self.epoch_samples is not None and self.epoch_samples <= 0:
            raise ValueError(f"epoch_samples must be > 0, got {self.epoch_samples}")
        self._rng = np.random.default_rng(self.seed)

    # ------------------------------------------------------------------ job bookkeeping
    def epochs(self, job: JobView) -> float:
        if self.epoch_samples is None:
            return job.epochs_done
        return job.samples_done / self.epoch_samples

    def _update_caps(self, state: SchedulerState) -> None:
        """§2.6: slow start (doubling at cap every 2 epochs) and the biggest-job scale-down."""
        cluster_size = state.cluster.num_gpus
        active = {j.job_id for j in state.jobs}
        for book in (
            self._caps,
            self._cap_epoch,
            self._pending,
            self._first_start,
            self._last_gpus,
            self._changed_at,
        ):
            for job_id in list(book):
                if job_id not in active:
                    del book[job_id]
        running = []
        for job in state.jobs:
            jid = job.job_id
            epochs = self.epochs(job)
            limit = min(cluster_size, self.max_request_factor * job.spec.num_gpus)
            if jid not in self._caps:
                self._caps[jid] = 1 if self.growth == "epochs" else limit
                self._cap_epoch[jid] = epochs
                self._pending[jid] = 1
            if self.growth == "none":
                self._caps[jid] = limit
            if job.num_gpus > 0:
                self._first_start.setdefault(jid, state.now)
                self._pending[jid] = job.num_gpus
                running.append(job)
                if (
                    self.growth == "epochs"
                    and job.num_gpus >= self._caps[jid]
                    and epochs - self._cap_epoch[jid] >= self.epochs_before_scaling
                ):
                    self._caps[jid] = min(2 * self._caps[jid], limit)
                    self._cap_epoch[jid] = epochs
            elif self._last_gpus.get(jid, 0) > 0:  # preempted: resume at half size
                self._pending[jid] = max(self._pending[jid] // 2, 1)
            self._caps[jid] = max(min(self._caps[jid], limit), 1)
            self._last_gpus[jid] = job.num_gpus
        if running and self.scale_down:
            biggest = max(running, key=lambda j: (j.num_gpus, -j.job_id))
            run_times = [state.now - self._first_start[j.job_id] for j in running]
            median = float(np.median(run_times))
            run_time = state.now - self._first_start[biggest.job_id]
            if biggest.num_gpus >= cluster_size / 2 and median > 0 and run_time > median:
                cap = max(
                    int(2 * biggest.num_gpus / (self.scale_down_factor * run_time / median + 1)),
                    1,
                )
                cap += cap % 2
                self._caps[biggest.job_id] = min(self._caps[biggest.job_id], cap)

    def _remaining_work(self, state: SchedulerState) -> dict[int, float]:
        """Predicted remaining work of every executed job (≥ epochs_before_scaling epochs)."""
        history: dict[str, list[float]] = {}
        for finished in state.finished:
            history.setdefault(finished.application, []).append(finished.work)
        mean_total = {app: sum(works) / len(works) for app, works in history.items()}
        predictions = {}
        for job in state.jobs:
            epochs = self.epochs(job)
            if epochs < self.epochs_before_scaling or job.work_done <= 0:
                continue
            if self.predictor == "oracle" and job.remaining_work is not None:
                predictions[job.job_id] = job.remaining_work
                continue
            total = mean_total.get(job.spec.application, 2.0 * job.work_done)
            rho = min(max(job.work_done / max(total, 1e-12), 0.01), 0.99)
            if self.sample_prediction:
                a = max(epochs, 0.5)
                b = a * (1.0 / rho - 1.0)
                rho = float(min(max(self._rng.beta(a, b), 1e-3), 0.999))
            predictions[job.job_id] = job.work_done * (1.0 / rho - 1.0)
        return predictions

    # ------------------------------------------------------------------ GA operators
    # Every operator works on a batch of chromosomes, shape (P, C): slot values are job ids or -1.
    @staticmethod
    def occurrence_rank(chromosomes: np.ndarray) -> np.ndarray:
        """For each slot, how many earlier slots of the same chromosome hold the same job."""
        batch = np.atleast_2d(chromosomes)
        rows = batch.shape[0]
        offset = int(batch.max(initial=0)) + 2
        keys = (np.arange(rows)[:, None] * offset + batch + 1).ravel()
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        new_group = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        starts = np.flatnonzero(new_group)
        group_start = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
        rank = np.empty(len(keys), dtype=np.int64)
        rank[order] = np.arange(len(keys)) - group_start
        return rank.reshape(batch.shape) if chromosomes.ndim == 2 else rank

    def enforce_caps(self, chromosomes: np.ndarray, caps: np.ndarray) -> np.ndarray:
        """Frees the slots of each job beyond its cap (keeping its first ones)."""
        out = chromosomes.copy()
        held = out >= 0
        rank = self.occurrence_rank(out)
        out[held & (rank >= caps[np.where(held, out, 0)])] = -1
        return out

    def crossover(
        self, first: np.ndarray, second: np.ndarray, caps: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Uniform per-slot crossover of row pairs; genes beyond a job's cap are dropped."""
        swap = self._rng.random(first.shape) < self.crossover_probability
        a = np.where(swap, second, first)
        b = np.where(swap, first, second)
        return self.enforce_caps(a, caps), self.enforce_caps(b, caps)

    def mutate(self, chromosomes: np.ndarray, protected: np.ndarray) -> np.ndarray:
        """Removes each unprotected job of each chromosome entirely with probability θ."""
        batch = np.atleast_2d(chromosomes)
        size = len(protected)
        drop = (self._rng.random((batch.shape[0], size)) < self.mutation_rate) & ~protected
        held = batch >= 0
        out = batch.copy()
        rows = np.broadcast_to(np.arange(batch.shape[0])[:, None], batch.shape)
        out[held & drop[rows, np.where(held, batch, 0)]] = -1
        return out if chromosomes.ndim == 2 else out[0]

    @staticmethod
    def pad(
        chromosomes: np.ndarray,
        new_jobs: np.ndarray,
        known_order: np.ndarray,
        pending: np.ndarray,
        caps: np.ndarray,
    ) -> np.ndarray:
        """Greedy repair: fill free slots with new jobs (1 GPU each, arrival order), then known
        jobs in SRTF order up to their current size, then up to their caps."""
        batch = np.atleast_2d(chromosomes)
        rows, _ = batch.shape
        size = len(caps)
        held = batch >= 0
        keys = (np.arange(rows)[:, None] * size + np.where(held, batch, 0))[held]
        counts = np.bincount(keys, minlength=rows * size).reshape(rows, size)
        want_new = (counts[:, new_jobs] == 0).astype(np.int64)
        after = counts.copy()
        after[:, new_jobs] += want_new
        target = np.minimum(pending[known_order], caps[known_order])
        want_current = np.maximum(target - after[:, known_order], 0)
        after[:, known_order] += want_current
        want_cap = np.maximum(caps[known_order] - after[:, known_order], 0)
        order = np.concatenate([new_jobs, known_order, known_order])
        wants = np.concatenate([want_new, want_current, want_cap], axis=1)
        out = batch.copy()
        for row in range(rows):
            free = np.flatnonzero(~held[row])
            if len(free) == 0:
                continue
            genes = np.repeat(order, wants[row])[: len(free)]
            out[row, free[: len(genes)]] = genes
        return out if chromosomes.ndim == 2 else out[0]

    # ------------------------------------------------------------------ JCT fitness
    def _predict_all(self, state: SchedulerState, rates_one: dict[int, float]) -> dict[int, float]:
        """Predicted remaining work of every active job (``fitness="jct"``).

        ``"oracle"``: the true remaining work. ``"history"``: the mean total work of finished jobs
        of the same application (ρ̂ = done / mean, a Beta sample around it when
        ``sample_prediction``); without a finished job of the application the job is assumed to
        need ``max(work done, prior_seconds on one GPU)`` more.
        """
        history: dict[str, list[float]] = {}
        for finished in state.finished:
            history.setdefault(finished.application, []).append(finished.work)
        mean_total = {app: sum(works) / len(works) for app, works in history.items()}
        out = {}
        for job in state.jobs:
            jid = job.job_id
            if self.predictor == "oracle" and job.remaining_work is not None:
                out[jid] = max(job.remaining_work, 1e-9)
                continue
            done = job.work_done
            total = mean_total.get(job.spec.application)
            if total is None:
                prior = self.prior_seconds * rates_one.get(jid, 0.0)
                out[jid] = max(self.unknown_factor * done, prior, 1e-9)
                continue
            if self.sample_prediction and done > 0:
                rho = min(max(done / max(total, 1e-12), 0.01), 0.99)
                a = max(self.epochs(job), 0.5)
                rho = float(min(max(self._rng.beta(a, a * (1.0 / rho - 1.0)), 1e-3), 0.999))
                out[jid] = done * (1.0 / rho - 1.0)
            else:
                out[jid] = max(total - done, 0.01 * total)
        return out

    def _rate_table(self, job: JobView, state: SchedulerState, cap: int) -> np.ndarray:
        """Progress/s of ``job`` on 0..cap GPUs under this policy's batch rule.

        ``rates="model"`` with a job model: the model's rate at the batch of ``batch_rule``
        (consolidated placement), cached per application, 5% of training, cap and batch rule;
        otherwise ONES's online table of measured rates.
        """
        sizes = np.arange(cap + 1)
        if self.rates != "model" or job.model is None:
            key = (job.job_id, cap, tuple(sorted(job.throughput_history.items())))
            table = self._table_cache.get(key)
            if table is None:
                table = self._table_cache[key] = online_table(job.throughput_history, sizes)
            return table
        model = job.model
        bucket = int(20 * min(job.work_done / max(model.total_work, 1e-12), 1.0))
        per_gpu = max(job.spec.batch_size // job.spec.num_gpus, 1)
        key2 = (id(model), bucket, cap, state.cluster.gpus_per_node, self.batch_rule, per_gpu)
        cached = self._model_cache.get(key2)
        if cached is None:
            work = model.total_work * bucket / 20
            rates = np.zeros(cap + 1)
            for n in range(1, cap + 1):
                nodes = packed_nodes(n, state.cluster)
                if self.batch_rule == "goodput":
                    b = model.best_batch(n, nodes, work)
                else:
                    b = ones_batch_size(job, n, self.lr_scale_cap)
                rates[n] = model.rate(n, nodes, b, work).progress_per_s
            cached = self._model_cache[key2] = (rates, sizes)
        return cached[0]

    def _jct_table(
        self,
        jobs: list[JobView],
        state: SchedulerState,
        caps: np.ndarray,
        size: int,
        locked: frozenset[int] = frozenset(),
    ) -> tuple[np.ndarray, dict[int, float]]:
        """Fitness table for ``fitness="jct"``: table[j, n] = −1 / T_j(n), 0 for n = 0.

        T_j(n) = predicted remaining work / rate on n GPUs, plus ``restart_weight ×
        restart_penalty + restart_relative × that time`` when n differs from the GPUs the job
        holds now (every start or resize restarts the job).
        Minimising Σ_j table[j, n_j] maximises the rate at which jobs are predicted to complete,
        which favours short jobs as SRTF does and charges every reconfiguration. Also trims each
        job's cap to the GPU count of its highest rate (more GPUs would only slow it down).
        Returns the table and each job's predicted remaining time on one GPU.
        """
        max_cap = int(caps.max())
        rate_rows = [self._rate_table(job, state, int(caps[job.job_id])) for job in jobs]
        rates_one = {
            job.job_id: float(r[1]) if len(r) > 1 else 0.0
            for job, r in zip(jobs, rate_rows, strict=True)
        }
        remaining = self._predict_all(state, rates_one)
        table = np.zeros((size, max_cap + 1))
        width = max_cap + 1
        ids = np.array([job.job_id for job in jobs], dtype=np.int64)
        rates = np.zeros((len(jobs), width))
        for i, row in enumerate(rate_rows):
            rates[i, : len(row)] = row
        lengths = np.array([len(row) for row in rate_rows])
        valid = (lengths >= 2) & (rates.max(axis=1) > 0)
        sizes = np.arange(width)
        job_caps = caps[ids]
        in_cap = (sizes[None, :] >= 1) & (sizes[None, :] <= job_caps[:, None])
        best = np.where(in_cap, rates, -np.inf).argmax(axis=1)
        held = np.array([job.num_gpus for job in jobs], dtype=np.int64)
        keep = np.array([job.job_id in locked for job in jobs], dtype=bool) & (held < lengths)
        best = np.where(keep, held, best)  # locked jobs keep their GPUs (decide() forbids more)
        work = np.array([remaining[job.job_id] for job in jobs])
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
            times = work[:, None] / np.maximum(rates[:, 1:], 1e-300)  # column k: k + 1 GPUs
            running = held[:, None] > 0
            penalty = np.where(
                running,
                self.restart_weight * self.restart_penalty + self.restart_relative * times,
                self.start_weight * self.restart_penalty,
            )
            penalty[(sizes[None, 1:] == held[:, None]) & running] = 0.0
            values = -((times + penalty) ** -self.jct_exponent)
        # n > best counts as best (more GPUs would not help); best ≥ 1 for valid rows
        column = np.minimum(sizes[None, 1:], np.maximum(best, 1)[:, None]) - 1
        rows = np.take_along_axis(values, column, axis=1)
        table[ids[valid], 1:] = rows[valid]
        caps[ids[valid]] = best[valid]
        one_gpu_time = {int(j): float(t) for j, t in zip(ids[valid], times[valid, 0], strict=True)}
        return table, one_gpu_time

    @staticmethod
    def greedy_counts(
        table: np.ndarray, caps: np.ndarray, job_ids: list[int], slots: int, start: np.ndarray
    ) -> np.ndarray:
        """Greedy minimisation of Σ_j table[j, n_j]: from ``start``, repeatedly give the job with
        the largest fitness drop per GPU (looking ahead over several GPUs, as restarts make the
        table non-convex) that many more GPUs, while free GPUs remain."""
        counts = start.copy()
        free = slots - int(counts.sum())
        heap: list[tuple[float, int, int]] = []

        def push(jid: int) -> None:
            n = int(counts[jid])
            top = min(int(caps[jid]), n + free)
            if top <= n:
                return
            gains = (table[jid, n] - table[jid, n + 1 : top + 1]) / np.arange(1, top - n + 1)
            k = int(np.argmax(gains))
            if gains[k] > 0:
                heapq.heappush(heap, (-float(gains[k]), jid, k + 1))

        # The first push of every job at once (the same gains as push()).
        if free > 0 and job_ids:
            ids = np.asarray(job_ids, dtype=np.int64)
            width = table.shape[1]
            now = counts[ids]
            top = np.minimum(caps[ids], now + free)
            steps = np.arange(1, width)
            cols = now[:, None] + steps[None, :]
            gains = (
                table[ids, np.minimum(now, width - 1)][:, None]
                - table[ids[:, None], np.minimum(cols, width - 1)]
            ) / steps[None, :]
            gains = np.where(cols <= top[:, None], gains, -np.inf)
            k = gains.argmax(axis=1)
            best = gains[np.arange(len(ids)), k]
            for i in np.flatnonzero((top > now) & (best > 0)).tolist():
                heap.append((-float(best[i]), int(ids[i]), int(k[i]) + 1))
            heapq.heapify(heap)
        while heap and free > 0:
            _, jid, k = heapq.heappop(heap)
            if k > free:
                push(jid)  # recompute within the GPUs left
                continue
            counts[jid] += k
            free -= k
            push(jid)
        return counts

    # ------------------------------------------------------------------ decide
    def decide(self, state: SchedulerState) -> Allocation:
        cluster = state.cluster
        slots = cluster.num_gpus
        jobs = sorted(state.jobs, key=lambda j: (j.spec.submit_time, j.job_id))
        if not jobs:
            self._population = None
            return Allocation({})
        self._update_caps(state)
        if len(self._table_cache) > 8 * len(jobs) + 1024:  # forget stale throughput tables
            self._table_cache.clear()
        size = max(j.job_id for j in jobs) + 1
        caps = np.zeros(size, dtype=np.int64)
        pending = np.zeros(size, dtype=np.int64)
        protected = np.ones(size, dtype=bool)
        active = np.zeros(size, dtype=bool)
        for job in jobs:
            caps[job.job_id] = self._caps[job.job_id]
            pending[job.job_id] = self._pending[job.job_id]
            protected[job.job_id] = self.epochs(job) < self.epochs_before_scaling
            active[job.job_id] = True
        time_locked: frozenset[int] = frozenset()
        if self.update_guard == "time":
            time_locked = frozenset(
                j.job_id
                for j in jobs
                if j.num_gpus > 0
                and state.now - self._changed_at.get(j.job_id, -math.inf)
                < self.update_interval_seconds
            )
        if self.fitness == "jct":
            table, one_gpu_time = self._jct_table(jobs, state, caps, size, time_locked)
        else:
            table, one_gpu_time = self._gpu_time_table(jobs, state, caps, size)
        max_cap = table.shape[1] - 1
        by_id = {j.job_id: j for j in jobs}
        for jid in time_locked:  # a job changed less than update_interval_seconds ago stays
            cur = by_id[jid].num_gpus
            if cur <= max_cap:
                table[jid, :cur] = _FORBIDDEN
                table[jid, cur + 1 :] = _FORBIDDEN
                caps[jid] = cur
        new_jobs = np.array(
            [j.job_id for j in jobs if j.job_id not in one_gpu_time and not j.ever_ran],
            dtype=np.int64,
        )
        new_set = set(new_jobs.tolist())
        known_order = np.array(
            sorted(
                (j.job_id for j in jobs if j.job_id not in new_set),
                key=lambda jid: (one_gpu_time.get(jid, math.inf), jid),
            ),
            dtype=np.int64,
        )

        current = np.full(slots, -1, dtype=np.int64)
        for job_id, assignment in state.current.jobs.items():
            current[list(assignment.slots)] = job_id
        population = self._population
        if population is None or population.shape[1] != slots:
            population = np.repeat(current[None, :], self.population_size, axis=0)
        population = population.copy()
        population[(population >= size) | ~active[np.clip(population, 0, size - 1)]] = -1
        population = self.enforce_caps(population, caps)
        population = self.pad(population, new_jobs, known_order, pending, caps)
        job_index = np.arange(size)

        def fitness(candidates: np.ndarray) -> np.ndarray:
            rows = candidates.shape[0]
            held = candidates >= 0
            keys = (np.arange(rows)[:, None] * size + np.where(held, candidates, 0))[held]
            counts = np.bincount(keys, minlength=rows * size).reshape(rows, size)
            return table[job_index, np.minimum(counts, max_cap)].sum(axis=1)

        seeds = np.empty((0, slots), dtype=np.int64)
        if self.seed_greedy:
            ids = [j.job_id for j in jobs]
            now_counts = np.zeros(size, dtype=np.int64)
            for job in jobs:
                now_counts[job.job_id] = min(job.num_gpus, int(caps[job.job_id]))
            rows = []
            scratch = np.zeros(size, dtype=np.int64)
            for jid in time_locked:
                scratch[jid] = now_counts[jid]
            for start in (scratch, now_counts):
                greedy = self.greedy_counts(table, caps, ids, slots, start)
                row = np.full(slots, -1, dtype=np.int64)
                genes = np.repeat(np.arange(size), greedy)
                row[: len(genes)] = genes
                rows.append(row)
            seeds = np.stack(rows)

        half = self.population_size // 2
        for _ in range(self.generations_per_decision):
            pairs = np.array(
                [self._rng.choice(self.population_size, size=2, replace=False) for _ in range(half)]
            )
            first, second = self.crossover(population[pairs[:, 0]], population[pairs[:, 1]], caps)
            mutants = self.mutate(population, protected)
            candidates = self.pad(
                np.concatenate([population, first, second, mutants]),
                new_jobs,
                known_order,
                pending,
                caps,
            )
            candidates = np.concatenate([candidates, seeds])
            scores = fitness(candidates)
            best = np.argsort(scores, kind="stable")[: self.population_size]
            population = candidates[best]
        self._population = population

        target = np.bincount(population[0][population[0] >= 0], minlength=size)
        held = {j.job_id: j.num_gpus for j in jobs if j.num_gpus > 0}
        changed_running = [jid for jid, n in held.items() if target[jid] != n]
        if self.update_guard == "time":  # the fitness forbids these; a fallback if violated
            locked = [jid for jid in changed_running if jid in time_locked]
        else:
            locked = [
                jid
                for jid in changed_running
                if by_id[jid].epochs_at_last_change is not None
                and self.epochs(by_id[jid]) - self._epochs_at(by_id[jid])
                < self.update_interval_epochs
            ]
        if not locked or self.update_guard == "none":
            counts = {int(j): int(target[j]) for j in np.flatnonzero(target)}
        elif self.update_guard in ("per-job", "time"):
            # Locked jobs keep their GPUs; the others follow the best individual where it fits.
            counts = {jid: held[jid] for jid in locked}
            free = slots - sum(counts.values())
            for job_id in np.unique(population[0][population[0] >= 0]).tolist():
                if job_id in counts:
                    continue
                n = min(int(target[job_id]), free)
                if n > 0:
                    counts[job_id] = n
                    free -= n
        else:  # "global" (artifact): only starts on free GPUs
            counts = dict(held)
            free = slots - sum(held.values())
            for job_id in np.unique(population[0][population[0] >= 0]).tolist():
                n = int(target[job_id])
                if job_id not in held and 0 < n <= free:
                    counts[job_id] = n
                    free -= n
        for job in jobs:
            if counts.get(job.job_id, 0) != job.num_gpus:
                self._changed_at[job.job_id] = state.now
        batches = {j: ones_batch_size(by_id[j], n, self.lr_scale_cap) for j, n in counts.items()}
        allocation = place(counts, batches, state.current, cluster)
        if self.batch_rule == "linear":
            return allocation
        out = {}
        for job_id, assignment in allocation.jobs.items():
            job = by_id[job_id]
            batch = assignment.batch_size
            if job.model is not None:
                nodes = cluster.nodes_spanned(assignment.slots)
                batch = job.model.best_batch(assignment.num_gpus, nodes, job.work_done)
            out[job_id] = JobAssignment(slots=assignment.slots, batch_size=int(batch))
        return Allocation(out)

    def _gpu_time_table(
        self, jobs: list[JobView], state: SchedulerState, caps: np.ndarray, size: int
    ) -> tuple[np.ndarray, dict[int, float]]:
        """The artifact's fitness table: table[j, n] = n · remaining_j / x_j(n) (GPU-time), 0
        for jobs without a prediction; and each predicted job's remaining time on one GPU."""
        remaining = self._remaining_work(state)
        max_cap = int(caps.max())
        sizes = np.arange(max_cap + 1)
        gpu_time = np.zeros((size, max_cap + 1))
        one_gpu_time = {}
        for job in jobs:
            work = remaining.get(job.job_id)
            if work is None:
                continue
            if self.rates == "model" and job.model is not None:
                rates = self._rate_table(job, state, max_cap)
            else:
                key = (job.job_id, max_cap, tuple(sorted(job.throughput_history.items())))
                cached = self._table_cache.get(key)
                if cached is None:
                    cached = self._table_cache[key] = online_table(job.throughput_history, sizes)
                rates = cached
            if rates[1] <= 0:
                continue
            with np.errstate(divide="ignore", invalid="ignore"):
                gpu_time[job.job_id, 1:] = sizes[1:] * work / rates[1:]
            one_gpu_time[job.job_id] = work / rates[1]
        return gpu_time, one_gpu_time

    def _epochs_at(self, job: JobView) -> float:
        """The job's epoch count (in this policy's epochs) at its last change."""
        last = job.epochs_at_last_change or 0.0
        if self.epoch_samples is None or job.epochs_done <= 0:
            return last
        return last * (job.samples_done / job.epochs_done) / self.epoch_samples
