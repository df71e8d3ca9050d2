"""Deterministic finite state controllers (FSCs): exact joint evaluation, simulation, JSON and DOT.

An FSC of agent i has nodes ``0..num_nodes-1``, an action ``actions[n]`` per node and a successor
``transitions[n, z]`` per (node, own observation); it starts in node ``start``.

Shape legend:
    S    number of world states
    JA   number of joint actions;  JO  number of joint observations
    N_i  nodes of agent i's FSC;   K   joint nodes, the product of the N_i
    E    simulated episodes

Joint actions, observations and joint nodes are all mixed-radix indices with the LAST agent varying
fastest (numpy's C order), matching ``DecPOMDP.joint_action_index``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

if TYPE_CHECKING:
    from infjesp.model import DecPOMDP

try:  # the shared error base class, when the package provides it
    from infjesp.errors import InfJespError as _ErrorBase
except ImportError:  # pragma: no cover - only while errors.py does not exist yet
    _ErrorBase = ValueError  # type: ignore[misc, assignment]

_ERROR_BASES: tuple[type[Exception], ...] = (
    (_ErrorBase,) if issubclass(_ErrorBase, ValueError) else (_ErrorBase, ValueError)
)

FSC_FORMAT = "infjesp-fsc/1"
# Above this many unknowns (joint nodes × states) the linear system is solved sparse.
_DENSE_LIMIT = 1500
# Up to this many unknowns evaluate_joint_at factorises the restricted system directly.
_DIRECT_LIMIT = 20_000


class FSCError(*_ERROR_BASES):  # type: ignore[misc]
    """An FSC that does not fit its model, or a value request the model cannot answer."""


class FSCFormatError(FSCError):
    """A malformed FSC JSON document; the message names the source and the field."""


@dataclass(frozen=True, eq=False)
class FSC:
    """A deterministic finite state controller of one agent.

    Attributes:
        actions: ``(N,)`` int, the action index ψ(n) of each node.
        transitions: ``(N, Z)`` int, the successor η(n, z) of each node on each own observation.
        start: the start node.
    """

    actions: np.ndarray
    transitions: np.ndarray
    start: int = 0

    def __post_init__(self) -> None:
        actions = np.array(self.actions)
        transitions = np.array(self.transitions)
        if actions.ndim != 1 or actions.size == 0:
            raise ValueError(f"actions must be a non-empty 1-D array, got shape {actions.shape}")
        if not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be integers, got dtype {actions.dtype}")
        if (
            transitions.ndim != 2
            or transitions.shape[0] != actions.size
            or transitions.shape[1] < 1
        ):
            raise ValueError(
                f"transitions must have shape ({actions.size}, num_observations), "
                f"got {transitions.shape}"
            )
        if not np.issubdtype(transitions.dtype, np.integer):
            raise ValueError(f"transitions must be integers, got dtype {transitions.dtype}")
        if actions.min() < 0:
            raise ValueError(f"actions must be >= 0, got {int(actions.min())}")
        if transitions.min() < 0 or transitions.max() >= actions.size:
            raise ValueError(
                f"transitions must lie in [0, {actions.size}), got values "
                f"{int(transitions.min())}..{int(transitions.max())}"
            )
        if isinstance(self.start, bool) or not isinstance(self.start, int | np.integer):
            raise ValueError(f"start must be an int, got {self.start!r}")
        if not 0 <= self.start < actions.size:
            raise ValueError(f"start must lie in [0, {actions.size}), got {self.start}")
        actions = actions.astype(np.int64)
        transitions = transitions.astype(np.int64)
        actions.setflags(write=False)
        transitions.setflags(write=False)
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "transitions", transitions)
        object.__setattr__(self, "start", int(self.start))

    @property
    def num_nodes(self) -> int:
        """Number of nodes N."""
        return int(self.actions.size)

    @property
    def num_observations(self) -> int:
        """Number of own observations Z (columns of ``transitions``)."""
        return int(self.transitions.shape[1])

    @classmethod
    def constant(cls, action: int, num_observations: int) -> FSC:
        """A one-node FSC that always plays ``action``."""
        if num_observations < 1:
            raise ValueError(f"num_observations must be >= 1, got {num_observations}")
        return cls(np.array([action]), np.zeros((1, num_observations), dtype=np.int64))

    @classmethod
    def random(
        cls, num_actions: int, num_observations: int, max_nodes: int, rng: np.random.Generator
    ) -> FSC:
        """MC-JESP's random initialisation.

        The node count is uniform in ``1..max_nodes``, each node gets a uniform random action, and
        each (node, observation) a uniform random successor.
        """
        if num_actions < 1:
            raise ValueError(f"num_actions must be >= 1, got {num_actions}")
        if num_observations < 1:
            raise ValueError(f"num_observations must be >= 1, got {num_observations}")
        if max_nodes < 1:
            raise ValueError(f"max_nodes must be >= 1, got {max_nodes}")
        n = int(rng.integers(1, max_nodes + 1))
        actions = rng.integers(0, num_actions, size=n)
        transitions = rng.integers(0, n, size=(n, num_observations))
        return cls(actions, transitions)

    def reachable(self) -> FSC:
        """The same controller with the nodes unreachable from ``start`` removed.

        Surviving nodes keep their relative order.
        """
        seen = np.zeros(self.num_nodes, dtype=bool)
        seen[self.start] = True
        frontier = np.array([self.start])
        while frontier.size:
            successors = np.unique(self.transitions[frontier])
            frontier = successors[~seen[successors]]
            seen[frontier] = True
        if seen.all():
            return self
        new_index = np.cumsum(seen) - 1
        return FSC(
            self.actions[seen], new_index[self.transitions[seen]], int(new_index[self.start])
        )

    def minimized(self) -> FSC:
        """The smallest controller with the same behaviour (and so the same value in any model).

        Unreachable nodes are dropped, then nodes are merged by partition refinement (Moore's
        algorithm): start from the classes "same action", split a class whenever two of its nodes
        move to different classes on some observation, until nothing splits. Merged nodes emit
        the same action after every observation sequence, so the joint value is unchanged
        exactly. Classes are numbered in order of their first node, so the result is
        deterministic.
        """
        fsc = self.reachable()
        classes = _first_seen_labels(fsc.actions[:, None])
        while True:
            signature = np.column_stack([classes, classes[fsc.transitions]])
            refined = _first_seen_labels(signature)
            if refined.max() == classes.max():
                break
            classes = refined
        count = int(classes.max()) + 1
        if count == fsc.num_nodes:
            return fsc
        representative = np.zeros(count, dtype=np.int64)
        representative[classes[::-1]] = np.arange(fsc.num_nodes)[::-1]  # first node of each class
        return FSC(
            fsc.actions[representative],
            classes[fsc.transitions[representative]],
            int(classes[fsc.start]),
        )


def _first_seen_labels(rows: np.ndarray) -> np.ndarray:
    """Labels 0, 1, … for the distinct rows of ``rows``, numbered in order of first occurrence."""
    _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first)  # unique rows sorted by where they first appear
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank[inverse.ravel()].astype(np.int64)


@dataclass(frozen=True, eq=False)
class JointValue:
    """Exact value of a joint FSC.

    Attributes:
        value: V(b0) at the start nodes, ``Σ_s b0(s) V(n^0, s)``.
        V: ``(N_1, …, N_N, S)`` value of every joint node and state.
    """

    value: float
    V: np.ndarray


def check_fscs(model: DecPOMDP, fscs: Sequence[FSC]) -> None:
    """Raise FSCError unless ``fscs`` holds one FSC per agent that fits the model's sizes."""
    if len(fscs) != model.num_agents:
        raise FSCError(f"fscs: expected {model.num_agents} controllers, got {len(fscs)}")
    for i, fsc in enumerate(fscs):
        if not isinstance(fsc, FSC):
            raise FSCError(f"fscs[{i}]: expected an FSC, got {type(fsc).__name__}")
        if fsc.num_observations != model.num_observations[i]:
            raise FSCError(
                f"fscs[{i}]: has {fsc.num_observations} observation columns, agent {i} has "
                f"{model.num_observations[i]} observations"
            )
        if int(fsc.actions.max()) >= model.num_actions[i]:
            raise FSCError(
                f"fscs[{i}]: action index {int(fsc.actions.max())} out of range, agent {i} has "
                f"{model.num_actions[i]} actions"
            )


def _joint_structure(model: DecPOMDP, fscs: Sequence[FSC]) -> tuple[np.ndarray, np.ndarray]:
    """Joint action of each joint node, and the successor joint node on each joint observation.

    Returns:
        ``ja_K`` ``(K,)`` joint action index per joint node, and ``next_KJO`` ``(K, JO)`` the
        joint successor node per joint observation.
    """
    sizes = tuple(f.num_nodes for f in fscs)
    nodes_NK = np.indices(sizes).reshape(len(fscs), -1)  # (N, K), last agent fastest
    actions_NK = np.stack([f.actions[nodes_NK[i]] for i, f in enumerate(fscs)])
    ja_K = np.ravel_multi_index(tuple(actions_NK), model.num_actions)
    obs_NJO = np.indices(model.num_observations).reshape(len(fscs), -1)  # (N, JO)
    next_NKJO = np.stack(
        [f.transitions[nodes_NK[i][:, None], obs_NJO[i][None, :]] for i, f in enumerate(fscs)]
    )
    next_KJO = np.ravel_multi_index(tuple(next_NKJO), sizes)
    return ja_K, next_KJO


def _transition_matrix(
    model: DecPOMDP, fscs: Sequence[FSC], discount: float
) -> tuple[scipy.sparse.csr_array, np.ndarray]:
    """The discounted joint-node/state transition matrix and the reward vector.

    Returns:
        ``M`` ``(K·S, K·S)`` sparse, ``M[(k,s),(k',s')] = γ Σ_z T(s'|s,ψ(k)) O(z|ψ(k),s')
        1[η(k,z)=k']``, and ``r`` ``(K·S,)`` with ``r[(k,s)] = R(s, ψ(k))``.
    """
    ja_K, next_KJO = _joint_structure(model, fscs)
    S = model.num_states
    K = ja_K.size
    T = np.asarray(model.T, dtype=float)
    O = np.asarray(model.O, dtype=float)  # noqa: E741
    rows, cols, vals = [], [], []
    for ja in np.unique(ja_K):
        # The non-zero (s, s', z) of T(s'|s,ja)·O(z|ja,s'), found without a dense (S, S', JO).
        s, s_next = np.nonzero(T[ja])
        pair, z = np.nonzero(O[ja][s_next])  # (nnz(T), JO) rows of O for each successor
        s, s_next = s[pair], s_next[pair]
        prob = T[ja, s, s_next] * O[ja, s_next, z]
        ks = np.flatnonzero(ja_K == ja)
        rows.append((ks[:, None] * S + s[None, :]).ravel())
        cols.append((next_KJO[ks][:, z] * S + s_next[None, :]).ravel())
        vals.append(np.broadcast_to(discount * prob, (ks.size, s.size)).ravel())
    M = scipy.sparse.coo_array(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(K * S, K * S)
    ).tocsr()  # duplicates (several z to the same successor) are summed
    r = np.asarray(model.R, dtype=float)[:, ja_K].T.ravel()  # (K·S,)
    return M, r


def _value_at_start(model: DecPOMDP, fscs: Sequence[FSC], V_KS: np.ndarray) -> JointValue:
    sizes = tuple(f.num_nodes for f in fscs)
    V = V_KS.reshape(*sizes, model.num_states)
    start = tuple(f.start for f in fscs)
    return JointValue(value=float(np.asarray(model.b0, dtype=float) @ V[start]), V=V)


def evaluate_joint(
    model: DecPOMDP, fscs: Sequence[FSC], discount: float | None = None
) -> JointValue:
    """Exact infinite-horizon value of a joint FSC by solving the linear system of §2.1.

    ``V(n,s) = R(s,ψ(n)) + γ Σ_{s'} Σ_z T(s'|s,ψ(n)) O(z|ψ(n),s') V(η(n,z), s')``, with
    ``(ΠN_i)·S`` unknowns: a dense solve when small; otherwise sparse BiCGSTAB to a residual of
    1e-10 (relative), with ``scipy.sparse.linalg.spsolve`` as the fallback.

    Args:
        model: the Dec-POMDP.
        fscs: one FSC per agent.
        discount: γ to use instead of ``model.discount``; must be in [0, 1).

    Returns:
        The value at b0 and the start nodes, and V of shape ``(N_1, …, N_N, S)``.

    Raises:
        FSCError: if γ ≥ 1 (pass ``--discount``) or the FSCs do not fit the model.
    """
    gamma = float(model.discount if discount is None else discount)
    if not 0.0 <= gamma < 1.0:
        raise FSCError(
            f"infinite-horizon evaluation needs a discount in [0, 1), got {gamma:g}; "
            "override the file's discount with --discount (e.g. --discount 0.9)"
        )
    check_fscs(model, fscs)
    M, r = _transition_matrix(model, fscs, gamma)
    A = (scipy.sparse.identity(r.size, format="csr") - M).tocsr()
    V = np.linalg.solve(A.toarray(), r) if r.size <= _DENSE_LIMIT else _solve_sparse(A, r)
    return _value_at_start(model, fscs, V)


def _closure(M: scipy.sparse.csr_array, sources: np.ndarray) -> np.ndarray:
    """Sorted indices of the rows reachable from ``sources`` along the non-zeros of ``M``."""
    reached = np.zeros(M.shape[0], dtype=bool)
    frontier = np.unique(np.asarray(sources, dtype=np.int64))
    reached[frontier] = True
    indptr, indices = M.indptr, M.indices
    while frontier.size:
        lengths = indptr[frontier + 1] - indptr[frontier]
        if not lengths.sum():
            break
        starts = np.repeat(
            indptr[frontier] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths
        )
        successors = np.unique(indices[np.arange(int(lengths.sum())) + starts])
        frontier = successors[~reached[successors]]
        reached[frontier] = True
    return np.flatnonzero(reached)


def evaluate_joint_at(
    model: DecPOMDP,
    fscs: Sequence[FSC],
    rows: np.ndarray | None = None,
    discount: float | None = None,
) -> tuple[float, np.ndarray]:
    """Exact values of a joint FSC, solved only over the (joint node, state) pairs that matter.

    The linear system of :func:`evaluate_joint` restricted to the pairs reachable from the start
    (joint start node, supp b0) and from ``rows`` is closed under successors, so its solution is
    exact there. On problems whose joint controllers reach few of their ``K·S`` pairs (Mars:
    ~2,700 of 640,000 for two 50-node controllers) it is orders of magnitude faster.

    Args:
        model: the Dec-POMDP.
        fscs: one FSC per agent.
        rows: flat indices ``k·S + s`` (k the joint node, last agent fastest) whose values are
            wanted besides the value at b0; None for none.
        discount: γ instead of ``model.discount``.

    Returns:
        ``(V(b0), V[rows])`` (an empty array when ``rows`` is None).

    Raises:
        FSCError: as :func:`evaluate_joint`.
    """
    gamma = float(model.discount if discount is None else discount)
    if not 0.0 <= gamma < 1.0:
        raise FSCError(
            f"infinite-horizon evaluation needs a discount in [0, 1), got {gamma:g}; "
            "override the file's discount with --discount (e.g. --discount 0.9)"
        )
    check_fscs(model, fscs)
    M, r = _transition_matrix(model, fscs, gamma)
    S = model.num_states
    sizes = tuple(f.num_nodes for f in fscs)
    k0 = int(np.ravel_multi_index(tuple(f.start for f in fscs), sizes))
    b0 = np.asarray(model.b0, dtype=float)
    start_rows = k0 * S + np.flatnonzero(b0 > 0)
    wanted = np.asarray([] if rows is None else rows, dtype=np.int64)
    keep = _closure(M, np.concatenate([start_rows, wanted]))
    A = (scipy.sparse.identity(keep.size, format="csr") - M[keep][:, keep]).tocsr()
    r_keep = r[keep]
    if keep.size <= _DENSE_LIMIT:
        V = np.linalg.solve(A.toarray(), r_keep)
    elif keep.size <= _DIRECT_LIMIT:
        V = scipy.sparse.linalg.splu(A.tocsc()).solve(r_keep)
    else:
        V = _solve_sparse(A, r_keep)
    position = np.full(r.size, -1, dtype=np.int64)
    position[keep] = np.arange(keep.size)
    value = float(b0[b0 > 0] @ V[position[start_rows]])
    return value, V[position[wanted]]


def evaluate_value(model: DecPOMDP, fscs: Sequence[FSC], discount: float | None = None) -> float:
    """The exact value V(b0) of a joint FSC (:func:`evaluate_joint_at` without extra rows)."""
    return evaluate_joint_at(model, fscs, None, discount)[0]


def _solve_sparse(A: scipy.sparse.csr_array, r: np.ndarray) -> np.ndarray:
    """Solve ``A V = r`` for ``A = I − M`` (M substochastic times γ < 1).

    BiCGSTAB converges in a few dozen sparse products because ``I − γP`` is well conditioned;
    a direct ``spsolve`` (slow on large systems: fill-in) is the fallback when it does not reach
    a residual of ``1e-10·(1 + max|r|)``.
    """
    tolerance = 1e-10 * (1.0 + float(np.abs(r).max()))
    try:
        V, info = scipy.sparse.linalg.bicgstab(A, r, rtol=1e-13, atol=0.0, maxiter=10_000)
    except TypeError:  # scipy < 1.12 names the relative tolerance `tol`
        V, info = scipy.sparse.linalg.bicgstab(A, r, tol=1e-13, atol=0.0, maxiter=10_000)
    if info == 0 and np.all(np.isfinite(V)) and np.abs(A @ V - r).max() <= tolerance:
        return V
    return scipy.sparse.linalg.spsolve(A.tocsc(), r)


def evaluate_joint_finite(
    model: DecPOMDP, fscs: Sequence[FSC], horizon: int, discount: float | None = None
) -> JointValue:
    """Exact value of a joint FSC over ``horizon`` steps by backward recursion (γ = 1 allowed).

    Args:
        model: the Dec-POMDP.
        fscs: one FSC per agent.
        horizon: number of decision steps, >= 0.
        discount: γ to use instead of ``model.discount``; must be in [0, 1].

    Returns:
        The h-step value at b0 and the start nodes, and V of shape ``(N_1, …, N_N, S)``.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int | np.integer) or horizon < 0:
        raise ValueError(f"horizon must be an int >= 0, got {horizon!r}")
    gamma = float(model.discount if discount is None else discount)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"discount must lie in [0, 1], got {gamma:g}")
    check_fscs(model, fscs)
    M, r = _transition_matrix(model, fscs, gamma)
    V = np.zeros_like(r)
    for _ in range(int(horizon)):
        V = r + M @ V
    return _value_at_start(model, fscs, V)


def _sample_rows(cdf: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One categorical sample per row of ``cdf`` (E, C): the first index whose CDF exceeds u."""
    u = (1.0 - rng.random(cdf.shape[0])) * cdf[:, -1]  # in (0, total]: never a zero-mass index
    return np.minimum((cdf < u[:, None]).sum(axis=1), cdf.shape[1] - 1)


def simulation_horizon(model: DecPOMDP, tolerance: float = 1e-3) -> int:
    """Smallest h with ``γ^h · max|R| / (1−γ) <= tolerance`` (the truncation error bound)."""
    gamma = float(model.discount)
    if not 0.0 <= gamma < 1.0:
        raise FSCError(
            f"an automatic simulation horizon needs a discount in [0, 1), got {gamma:g}; pass "
            "horizon= or override the discount with --discount"
        )
    if tolerance <= 0:
        raise ValueError(f"tolerance must be > 0, got {tolerance}")
    bound = float(np.abs(model.R).max()) / (1.0 - gamma)
    if bound <= tolerance or gamma == 0.0:
        return 1
    return max(1, math.ceil(math.log(tolerance / bound) / math.log(gamma)))


def simulate_joint(
    model: DecPOMDP,
    fscs: Sequence[FSC],
    episodes: int,
    horizon: int | None,
    rng: np.random.Generator,
    tolerance: float = 1e-3,
) -> tuple[float, float]:
    """Monte-Carlo estimate of the discounted return of a joint FSC, all episodes in parallel.

    Args:
        model: the Dec-POMDP (its ``discount`` is used; γ = 1 needs an explicit horizon).
        fscs: one FSC per agent.
        episodes: number of episodes E, >= 2.
        horizon: steps per episode; ``None`` picks :func:`simulation_horizon` for ``tolerance``.
        rng: the random generator.
        tolerance: truncation error allowed when ``horizon`` is None.

    Returns:
        ``(mean, ci95_halfwidth)`` of the discounted return; the half-width is ``1.96·sd/√E``.
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int | np.integer) or episodes < 2:
        raise ValueError(f"episodes must be an int >= 2, got {episodes!r}")
    check_fscs(model, fscs)
    if horizon is None:
        horizon = simulation_horizon(model, tolerance)
    elif horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    gamma = float(model.discount)
    T_cdf = np.cumsum(np.asarray(model.T, dtype=float), axis=-1)  # (JA, S, S')
    O_cdf = np.cumsum(np.asarray(model.O, dtype=float), axis=-1)  # (JA, S', JO)
    R = np.asarray(model.R, dtype=float)  # (S, JA)
    b0_cdf = np.cumsum(np.asarray(model.b0, dtype=float))[None, :]
    state_E = _sample_rows(np.repeat(b0_cdf, episodes, axis=0), rng)
    nodes_NE = np.array([[f.start] * episodes for f in fscs])
    total_E = np.zeros(episodes)
    weight = 1.0
    for _ in range(int(horizon)):
        actions_NE = np.stack([f.actions[nodes_NE[i]] for i, f in enumerate(fscs)])
        ja_E = np.ravel_multi_index(tuple(actions_NE), model.num_actions)
        total_E += weight * R[state_E, ja_E]
        state_E = _sample_rows(T_cdf[ja_E, state_E], rng)
        jo_E = _sample_rows(O_cdf[ja_E, state_E], rng)
        obs_NE = np.stack(np.unravel_index(jo_E, model.num_observations))
        nodes_NE = np.stack([f.transitions[nodes_NE[i], obs_NE[i]] for i, f in enumerate(fscs)])
        weight *= gamma
    halfwidth = 1.96 * float(total_E.std(ddof=1)) / math.sqrt(episodes)
    return float(total_E.mean()), halfwidth


def simulate_joint_pomdp_py(
    model: DecPOMDP,
    fscs: Sequence[FSC],
    episodes: int,
    horizon: int | None,
    rng: np.random.Generator,
    tolerance: float = 1e-3,
) -> tuple[float, float]:
    """Monte-Carlo estimate of the discounted return, stepping a ``pomdp_py.Environment``.

    The world is a pomdp-py environment over joint states and joint actions, with thin
    transition/observation/reward models that index the model's arrays; the agents follow their
    FSCs. One Python step per episode and time step makes it slow: it is an independent
    cross-check of :func:`simulate_joint` (the fast path), with the same arguments and result.
    """
    import pomdp_py  # deferred: importing pomdp-py takes about a second

    if isinstance(episodes, bool) or not isinstance(episodes, int | np.integer) or episodes < 2:
        raise ValueError(f"episodes must be an int >= 2, got {episodes!r}")
    check_fscs(model, fscs)
    if horizon is None:
        horizon = simulation_horizon(model, tolerance)
    elif horizon < 0:
        raise ValueError(f"horizon must be >= 0, got {horizon}")
    T = np.asarray(model.T, dtype=float)
    O = np.asarray(model.O, dtype=float)  # noqa: E741
    R = np.asarray(model.R, dtype=float)

    from infjesp.pomdp_py_adapter import _Indexed  # the integer-label mixin the adapter uses

    class JointState(_Indexed, pomdp_py.State):
        """A world state, by index."""

    class JointAction(_Indexed, pomdp_py.Action):
        """A joint action, by index."""

    class Transition(pomdp_py.TransitionModel):
        def sample(self, state: JointState, action: JointAction) -> JointState:
            return JointState(int(rng.choice(model.num_states, p=T[action.index, state.index])))

    class Observation(pomdp_py.ObservationModel):
        def sample(self, next_state: JointState, action: JointAction) -> int:
            return int(rng.choice(O.shape[2], p=O[action.index, next_state.index]))

    class Reward(pomdp_py.RewardModel):
        def sample(self, state: JointState, action: JointAction, next_state: JointState) -> float:
            return float(R[state.index, action.index])

    observation_model = Observation()
    gamma = float(model.discount)
    returns = np.empty(episodes)
    for e in range(episodes):
        start = JointState(int(rng.choice(model.num_states, p=np.asarray(model.b0, dtype=float))))
        env = pomdp_py.Environment(start, Transition(), Reward())
        nodes = [f.start for f in fscs]
        total, weight = 0.0, 1.0
        for _ in range(int(horizon)):
            ja = model.joint_action_index(
                [int(f.actions[n]) for f, n in zip(fscs, nodes, strict=True)]
            )
            action = JointAction(ja)
            total += weight * env.state_transition(action, execute=True)
            z = model.joint_observation(observation_model.sample(env.state, action))
            nodes = [int(f.transitions[n, zi]) for f, n, zi in zip(fscs, nodes, z, strict=True)]
            weight *= gamma
        returns[e] = total
    return float(returns.mean()), 1.96 * float(returns.std(ddof=1)) / math.sqrt(episodes)


# --------------------------------------------------------------------------------------------
# JSON


def fscs_to_json(
    model: DecPOMDP, fscs: Sequence[FSC], problem: str, discount: float
) -> dict[str, Any]:
    """The ``infjesp-fsc/1`` JSON document of a joint FSC (actions and observations by name)."""
    check_fscs(model, fscs)
    agents = []
    for i, fsc in enumerate(fscs):
        action_names = model.action_names[i]
        obs_names = model.observation_names[i]
        nodes = [
            {
                "action": action_names[int(fsc.actions[n])],
                "next": {obs_names[z]: int(fsc.transitions[n, z]) for z in range(len(obs_names))},
            }
            for n in range(fsc.num_nodes)
        ]
        agents.append({"start": fsc.start, "nodes": nodes})
    return {
        "format": FSC_FORMAT,
        "problem": str(problem),
        "discount": float(discount),
        "agents": agents,
    }


def _index_of(names: Sequence[str], name: object, source: str, field: str, kind: str) -> int:
    if not isinstance(name, str) or name not in names:
        raise FSCFormatError(
            f"{source}: {field}: unknown {kind} {name!r} (expected one of {', '.join(names)})"
        )
    return list(names).index(name)


def _node_index(value: object, num_nodes: int, source: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise FSCFormatError(f"{source}: {field}: expected a node index (int), got {value!r}")
    if not 0 <= value < num_nodes:
        raise FSCFormatError(f"{source}: {field}: node index {value} out of range [0, {num_nodes})")
    return value


def fscs_from_json(model: DecPOMDP, data: Any, source: str = "<json>") -> list[FSC]:
    """Parse an ``infjesp-fsc/1`` document against ``model``.

    Raises:
        FSCFormatError: naming ``source`` and the offending field.
    """
    if not isinstance(data, Mapping):
        raise FSCFormatError(f"{source}: expected a JSON object, got {type(data).__name__}")
    if data.get("format") != FSC_FORMAT:
        raise FSCFormatError(
            f"{source}: format: expected {FSC_FORMAT!r}, got {data.get('format')!r}"
        )
    agents = data.get("agents")
    if not isinstance(agents, list):
        raise FSCFormatError(f"{source}: agents: expected a list, got {type(agents).__name__}")
    if len(agents) != model.num_agents:
        raise FSCFormatError(
            f"{source}: agents: the model has {model.num_agents} agents, the file has {len(agents)}"
        )
    fscs = []
    for i, agent in enumerate(agents):
        where = f"agents[{i}]"
        if not isinstance(agent, Mapping):
            raise FSCFormatError(f"{source}: {where}: expected an object")
        nodes = agent.get("nodes")
        if not isinstance(nodes, list) or not nodes:
            raise FSCFormatError(f"{source}: {where}.nodes: expected a non-empty list")
        action_names = model.action_names[i]
        obs_names = model.observation_names[i]
        actions = np.empty(len(nodes), dtype=np.int64)
        transitions = np.empty((len(nodes), len(obs_names)), dtype=np.int64)
        for n, node in enumerate(nodes):
            at = f"{where}.nodes[{n}]"
            if not isinstance(node, Mapping):
                raise FSCFormatError(f"{source}: {at}: expected an object")
            actions[n] = _index_of(
                action_names, node.get("action"), source, f"{at}.action", "action"
            )
            nxt = node.get("next")
            if not isinstance(nxt, Mapping):
                raise FSCFormatError(f"{source}: {at}.next: expected an object")
            for name in nxt:
                _index_of(obs_names, name, source, f"{at}.next", "observation")
            for z, name in enumerate(obs_names):
                if name not in nxt:
                    raise FSCFormatError(f"{source}: {at}.next: missing observation {name!r}")
                transitions[n, z] = _node_index(nxt[name], len(nodes), source, f"{at}.next.{name}")
        start = _node_index(agent.get("start"), len(nodes), source, f"{where}.start")
        fscs.append(FSC(actions, transitions, start))
    return fscs


def write_fscs_json(
    path: str | os.PathLike[str],
    model: DecPOMDP,
    fscs: Sequence[FSC],
    problem: str,
    discount: float,
) -> None:
    """Write :func:`fscs_to_json` to ``path`` atomically (a temporary file, then ``os.replace``)."""
    text = json.dumps(fscs_to_json(model, fscs, problem, discount), indent=2) + "\n"
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_fscs_json(path: str | os.PathLike[str], model: DecPOMDP) -> list[FSC]:
    """Read an ``infjesp-fsc/1`` file; errors name the file and the field."""
    source = str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise FSCFormatError(f"{source}: cannot read: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise FSCFormatError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    return fscs_from_json(model, data, source=source)


# --------------------------------------------------------------------------------------------
# Graphviz


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(model: DecPOMDP, fsc: FSC, agent: int) -> str:
    """Graphviz DOT text of one agent's policy graph.

    Nodes are labelled ``"<index>: <action>"`` (the start node is drawn double); parallel edges
    are merged into one edge labelled with all their observations, comma-separated.
    """
    if not 0 <= agent < model.num_agents:
        raise ValueError(f"agent must lie in [0, {model.num_agents}), got {agent}")
    check_fsc = [FSC.constant(0, model.num_observations[j]) for j in range(model.num_agents)]
    check_fsc[agent] = fsc
    check_fscs(model, check_fsc)
    action_names = model.action_names[agent]
    obs_names = model.observation_names[agent]
    lines = [f"digraph {_dot_quote(f'agent {agent}')} {{", "  rankdir=LR;"]
    for n in range(fsc.num_nodes):
        shape = "doublecircle" if n == fsc.start else "circle"
        label = f"{n}: {action_names[int(fsc.actions[n])]}"
        lines.append(f"  n{n} [label={_dot_quote(label)}, shape={shape}];")
    for n in range(fsc.num_nodes):
        targets: dict[int, list[str]] = {}
        for z in range(fsc.num_observations):
            targets.setdefault(int(fsc.transitions[n, z]), []).append(obs_names[z])
        for m, names in targets.items():
            lines.append(f"  n{n} -> n{m} [label={_dot_quote(', '.join(names))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
