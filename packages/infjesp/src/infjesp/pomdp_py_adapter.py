"""A best-response POMDP as pomdp-py models, and POUCT as an independent online cross-check.

:func:`to_pomdp_py` wraps a :class:`~infjesp.bestresponse.BestResponsePOMDP` (extended states,
own actions, own observations; design §2.2) in pomdp-py's framework: integer-indexed
``State``/``Action``/``Observation`` subclasses, a ``TransitionModel`` that samples from the sparse
rows of ``T[a]``, the deterministic ``ObservationModel`` (the observation stored in the next
extended state), a ``RewardModel`` reading ``R``, a ``PolicyModel`` with uniform random rollouts
and a ``Histogram`` initial belief.

:func:`pouct_value` runs pomdp-py's POUCT online from b0 and reports the mean discounted return.
No online policy can beat the optimal one, so the mean must not be significantly above the
offline best-response value (up to the truncation of the episodes). Belief updates between the
real steps are exact (numpy Bayes updates, not pomdp-py's Python loop). pomdp-py draws from
Python's global :mod:`random`, which :func:`pouct_value` seeds from ``rng``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pomdp_py

if TYPE_CHECKING:
    from infjesp.bestresponse import BestResponsePOMDP

__all__ = ["PouctEstimate", "pouct_value", "to_pomdp_py"]


class _Indexed:
    """An immutable integer label with value equality (mixed into the pomdp-py classes)."""

    index: int

    def __init__(self, index: int) -> None:
        self.index = int(index)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.index))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _Indexed) and type(other) is type(self) and other.index == self.index
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.index})"


class ExtendedState(_Indexed, pomdp_py.State):
    """Extended state e (an index into the best-response POMDP's states)."""


class OwnAction(_Indexed, pomdp_py.Action):
    """Agent i's action."""


class OwnObservation(_Indexed, pomdp_py.Observation):
    """Agent i's observation (−1 = "none", only in the start states)."""


class SparseTransitionModel(pomdp_py.TransitionModel):
    """Samples e' from the CSR row ``T[a][e]``."""

    def __init__(self, br: BestResponsePOMDP, rng: np.random.Generator) -> None:
        self._rows = [(m.indptr, m.indices, m.data) for m in (t.tocsr() for t in br.T)]
        self._T = br.T
        self._num_states = br.num_states
        self.rng = rng

    def sample(self, state: ExtendedState, action: OwnAction) -> ExtendedState:
        indptr, indices, data = self._rows[action.index]
        lo, hi = indptr[state.index], indptr[state.index + 1]
        cdf = np.cumsum(data[lo:hi])
        pick = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return ExtendedState(int(indices[lo + min(pick, hi - lo - 1)]))

    def probability(
        self, next_state: ExtendedState, state: ExtendedState, action: OwnAction
    ) -> float:
        return float(self._T[action.index][state.index, next_state.index])

    def get_all_states(self) -> list[ExtendedState]:
        return [ExtendedState(e) for e in range(self._num_states)]


class StoredObservationModel(pomdp_py.ObservationModel):
    """Deterministic: the observation is the one stored in the next extended state."""

    def __init__(self, br: BestResponsePOMDP) -> None:
        self._obs = np.asarray(br.obs)
        self._num_observations = br.num_observations

    def probability(
        self, observation: OwnObservation, next_state: ExtendedState, action: OwnAction
    ) -> float:
        return float(int(self._obs[next_state.index]) == observation.index)

    def sample(self, next_state: ExtendedState, action: OwnAction) -> OwnObservation:
        return OwnObservation(int(self._obs[next_state.index]))

    def get_all_observations(self) -> list[OwnObservation]:
        return [OwnObservation(z) for z in range(self._num_observations)]


class TableRewardModel(pomdp_py.RewardModel):
    """``R_e(e, a)``; it does not depend on e'."""

    def __init__(self, br: BestResponsePOMDP) -> None:
        self._R = np.asarray(br.R, dtype=float)

    def sample(self, state: ExtendedState, action: OwnAction, next_state: ExtendedState) -> float:
        return float(self._R[state.index, action.index])


class UniformRolloutPolicy(pomdp_py.RolloutPolicy):
    """Every action available everywhere; rollouts pick one uniformly (with ``rng``)."""

    def __init__(self, num_actions: int, rng: np.random.Generator) -> None:
        self._actions = [OwnAction(a) for a in range(num_actions)]
        self.rng = rng

    def sample(self, state: ExtendedState) -> OwnAction:
        return self._actions[int(self.rng.integers(len(self._actions)))]

    def rollout(self, state: ExtendedState, history: Any = None) -> OwnAction:
        return self.sample(state)

    def get_all_actions(self, state: Any = None, history: Any = None) -> list[OwnAction]:
        return list(self._actions)


def _histogram(belief: np.ndarray) -> pomdp_py.Histogram:
    return pomdp_py.Histogram(
        {ExtendedState(int(e)): float(belief[e]) for e in np.flatnonzero(belief > 0)}
    )


def to_pomdp_py(
    br: BestResponsePOMDP, rng: np.random.Generator | None = None
) -> tuple[pomdp_py.Agent, pomdp_py.Environment]:
    """pomdp-py ``Agent`` and ``Environment`` of a best-response POMDP.

    Args:
        br: The best-response POMDP.
        rng: Drives the models' sampling and the environment's start state (default seed 0).

    Returns:
        ``(agent, environment)``; the agent's initial belief is ``Histogram(b0)`` and the
        environment starts in a state drawn from b0.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    transition = SparseTransitionModel(br, rng)
    observation = StoredObservationModel(br)
    reward = TableRewardModel(br)
    policy = UniformRolloutPolicy(br.num_actions, rng)
    b0 = np.asarray(br.b0, dtype=float)
    agent = pomdp_py.Agent(_histogram(b0), policy, transition, observation, reward)
    start = ExtendedState(int(rng.choice(b0.size, p=b0 / b0.sum())))
    environment = pomdp_py.Environment(start, transition, reward)
    return agent, environment


@dataclass(frozen=True)
class PouctEstimate:
    """POUCT's discounted returns over ``episodes`` episodes of ``steps`` steps.

    Attributes:
        mean: Mean discounted return.
        sem: Its standard error (``sd / √episodes``; 0 for one episode).
        returns: Per-episode discounted returns.
        truncation: ``γ^steps · max(0, −min R) / (1 − γ)``: how much the truncated return of ANY
            policy can exceed its infinite-horizon value (the tail's worst case).
    """

    mean: float
    sem: float
    returns: tuple[float, ...]
    truncation: float


def _bayes(br: BestResponsePOMDP, belief: np.ndarray, action: int, observation: int) -> np.ndarray:
    unnormalised = br.T[action].T @ belief
    unnormalised[np.asarray(br.obs) != observation] = 0.0
    total = float(unnormalised.sum())
    if total <= 0.0:  # pragma: no cover - the observation was sampled from this belief
        raise ValueError("observation has zero probability under the current belief")
    return np.asarray(unnormalised / total)


def pouct_value(
    br: BestResponsePOMDP,
    *,
    episodes: int,
    steps: int,
    num_sims: int = -1,
    planning_time: float = -1.0,
    max_depth: int | None = None,
    exploration_const: float | None = None,
    rng: np.random.Generator | None = None,
) -> PouctEstimate:
    """Online POUCT from b0: the mean discounted return over ``steps``-step episodes.

    Args:
        br: The best-response POMDP.
        episodes: Episodes (>= 1).
        steps: Real steps per episode (>= 1).
        num_sims: Simulations per step (or set ``planning_time``; one of them must be > 0).
        planning_time: Seconds per step.
        max_depth: Search depth (default ``steps``).
        exploration_const: UCB constant (default: the reward range, ``max R − min R``).
        rng: Seeds everything, including Python's global :mod:`random` used by pomdp-py.

    Returns:
        The mean and standard error of the discounted return, and the truncation bound.
    """
    if episodes < 1 or steps < 1:
        raise ValueError(f"episodes and steps must be >= 1, got {episodes} and {steps}")
    if num_sims <= 0 and planning_time <= 0:
        raise ValueError("set num_sims > 0 or planning_time > 0")
    rng = np.random.default_rng(0) if rng is None else rng
    random.seed(int(rng.integers(2**31)))
    R = np.asarray(br.R, dtype=float)
    gamma = float(br.discount)
    if exploration_const is None:
        exploration_const = max(1.0, float(R.max() - R.min()))
    returns = []
    for _ in range(episodes):
        agent, environment = to_pomdp_py(br, rng)
        planner = pomdp_py.POUCT(
            max_depth=steps if max_depth is None else max_depth,
            discount_factor=gamma,
            num_sims=num_sims,
            planning_time=planning_time,
            exploration_const=exploration_const,
            rollout_policy=agent.policy_model,
        )
        belief = np.asarray(br.b0, dtype=float)
        total, weight = 0.0, 1.0
        for _ in range(steps):
            action = planner.plan(agent)
            total += weight * environment.state_transition(action, execute=True)
            weight *= gamma
            observation = agent.observation_model.sample(environment.state, action)
            belief = _bayes(br, belief, action.index, observation.index)
            agent.set_belief(_histogram(belief), prior=False)
            planner.update(agent, action, observation)
        returns.append(total)
    values = np.array(returns)
    sem = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0
    truncation = gamma**steps * max(0.0, -float(R.min())) / (1.0 - gamma)
    return PouctEstimate(float(values.mean()), sem, tuple(float(v) for v in values), truncation)
