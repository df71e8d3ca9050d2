"""Finite-horizon JESP with policy trees: the reference mode that checks the model layer.

A policy tree of horizon h maps each own observation history of length t < h to an action. It is
stored as a complete Z-ary tree in breadth-first order: the history (z_1, …, z_t) is node
``offset(t) + ravel(z_1, …, z_t)`` with ``offset(t) = Σ_{u<t} Z^u`` and the first observation most
significant, so the children of node ``offset(t) + j`` are ``offset(t+1) + j·Z + z``.

Best responses and the brute-force optimum handle two agents (every shared benchmark file has
two); :func:`evaluate_trees` handles any number.

Shape legend:
    K   candidate trees of the fixed ("other") agent, processed as a batch
    S   world states
    H   the other agent's observation histories at the current depth
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from infjesp.fsc import FSC, evaluate_joint_finite

if TYPE_CHECKING:
    from infjesp.model import DecPOMDP

_CHUNK = 4096  # candidate trees per vectorised batch in the brute force


def tree_size(num_observations: int, horizon: int) -> int:
    """Number of nodes Σ_{t<h} Z^t of a complete policy tree."""
    return sum(num_observations**t for t in range(horizon))


@dataclass(frozen=True, eq=False)
class PolicyTree:
    """A horizon-h policy tree of one agent.

    Attributes:
        actions: ``(Σ_{t<h} Z^t,)`` int, the action at each observation history (BFS order).
        num_observations: Z, the agent's number of observations.
    """

    actions: np.ndarray
    num_observations: int

    def __post_init__(self) -> None:
        actions = np.array(self.actions)
        if actions.ndim != 1 or actions.size == 0 or not np.issubdtype(actions.dtype, np.integer):
            raise ValueError(f"actions must be a non-empty 1-D int array, got {actions!r}")
        if actions.min() < 0:
            raise ValueError(f"actions must be >= 0, got {int(actions.min())}")
        if self.num_observations < 1:
            raise ValueError(f"num_observations must be >= 1, got {self.num_observations}")
        h, size = 0, 0
        while size < actions.size:
            size += self.num_observations**h
            h += 1
        if size != actions.size:
            raise ValueError(
                f"actions has {actions.size} entries, which is no complete tree size for "
                f"num_observations={self.num_observations}"
            )
        actions = actions.astype(np.int64)
        actions.setflags(write=False)
        object.__setattr__(self, "actions", actions)
        object.__setattr__(self, "_horizon", h)

    @property
    def horizon(self) -> int:
        """The tree's horizon h (number of levels)."""
        return int(self._horizon)  # type: ignore[attr-defined]

    @classmethod
    def random(
        cls, num_actions: int, num_observations: int, horizon: int, rng: np.random.Generator
    ) -> PolicyTree:
        """A tree with a uniform random action at every history."""
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        size = tree_size(num_observations, horizon)
        return cls(rng.integers(0, num_actions, size=size), num_observations)

    def to_fsc(self) -> FSC:
        """The tree as an FSC (leaves loop on themselves; exact for up to ``horizon`` steps)."""
        Z = self.num_observations
        n = self.actions.size
        transitions = np.arange(n)[:, None] * Z + 1 + np.arange(Z)[None, :]  # child = n·Z + 1 + z
        leaves = transitions >= n
        transitions[leaves] = np.broadcast_to(np.arange(n)[:, None], transitions.shape)[leaves]
        return FSC(self.actions, transitions, 0)


def _check_trees(model: DecPOMDP, trees: Sequence[PolicyTree], agents: Sequence[int]) -> None:
    for tree, i in zip(trees, agents, strict=True):
        if not isinstance(tree, PolicyTree):
            raise ValueError(f"trees: expected a PolicyTree for agent {i}, got {type(tree)}")
        if tree.num_observations != model.num_observations[i]:
            raise ValueError(
                f"trees: agent {i}'s tree has {tree.num_observations} observations, the model "
                f"has {model.num_observations[i]}"
            )
        if int(tree.actions.max()) >= model.num_actions[i]:
            raise ValueError(f"trees: agent {i}'s tree uses an action index out of range")


def evaluate_trees(
    model: DecPOMDP, trees: Sequence[PolicyTree], horizon: int | None = None
) -> float:
    """Exact h-step value at b0 of a joint policy of trees (γ = ``model.discount``, 1 allowed).

    Args:
        model: the Dec-POMDP.
        trees: one tree per agent.
        horizon: steps to evaluate; defaults to the smallest tree horizon.
    """
    if len(trees) != model.num_agents:
        raise ValueError(f"trees: expected {model.num_agents} trees, got {len(trees)}")
    _check_trees(model, trees, range(model.num_agents))
    if horizon is None:
        horizon = min(t.horizon for t in trees)
    if horizon < 0 or any(t.horizon < horizon for t in trees):
        raise ValueError(f"horizon must lie in [0, every tree's horizon], got {horizon}")
    return evaluate_joint_finite(model, [t.to_fsc() for t in trees], horizon).value


def _best_response_batch(
    model: DecPOMDP, other_actions_KN: np.ndarray, agent: int, horizon: int
) -> tuple[np.ndarray, np.ndarray]:
    """Exact best responses of ``agent`` to each of K trees of the other agent (2 agents).

    Dynamic programming over the agent's own histories, carrying the unnormalised joint
    distribution β(s, other's history) of each own history and branching on the own action.

    Args:
        model: a 2-agent Dec-POMDP.
        other_actions_KN: ``(K, tree_size)`` the other agent's tree actions, one row per candidate.
        agent: the responding agent (0 or 1).
        horizon: h.

    Returns:
        ``values`` ``(K,)`` and the best-response tree actions ``(K, own tree_size)``.
    """
    other = 1 - agent
    A_self, A_other = model.num_actions[agent], model.num_actions[other]
    Z_other = model.num_observations[other]
    gamma = float(model.discount)
    T = np.asarray(model.T, dtype=float)  # (JA, S, S')
    JA, S = T.shape[0], model.num_states
    O = np.asarray(model.O, dtype=float).reshape(JA, S, *model.num_observations)  # noqa: E741
    if agent == 0:
        O = O.transpose(0, 1, 3, 2)  # noqa: E741 - (JA, S', Z_other, Z_self)
        ja_of = np.arange(A_self)[:, None] * A_other + np.arange(A_other)[None, :]
    else:
        ja_of = np.arange(A_other)[None, :] * A_self + np.arange(A_self)[:, None]
    R = np.asarray(model.R, dtype=float)  # (S, JA)
    K = other_actions_KN.shape[0]
    offsets = np.cumsum([0] + [Z_other**t for t in range(horizon)])

    def recurse(t: int, beta_KSH: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        if t == horizon:
            return np.zeros(K), []
        other_KH = other_actions_KN[:, offsets[t] : offsets[t + 1]]
        best = np.full(K, -np.inf)
        best_levels: list[np.ndarray] = []
        for a in range(A_self):
            ja_KH = ja_of[a][other_KH]
            total = np.einsum("ksh,skh->k", beta_KSH, R[:, ja_KH])
            pred_KHS = np.einsum("ksh,khst->kht", beta_KSH, T[ja_KH])  # (K, H, S')
            joint_KHSZZ = pred_KHS[..., None, None] * O[ja_KH]  # (K, H, S', Zo, Zs)
            children = []
            for z in range(joint_KHSZZ.shape[-1]):
                nb = joint_KHSZZ[..., z].transpose(0, 2, 1, 3).reshape(K, S, -1)  # (K, S', H·Zo)
                value, levels = recurse(t + 1, nb)
                total = total + gamma * value
                children.append(levels)
            levels = [np.full((K, 1), a)] + [
                np.concatenate([c[u] for c in children], axis=1) for u in range(horizon - t - 1)
            ]
            better = total > best
            best = np.where(better, total, best)
            best_levels = (
                levels
                if not best_levels
                else [
                    np.where(better[:, None], n, o)
                    for n, o in zip(levels, best_levels, strict=True)
                ]
            )
        return best, best_levels

    beta0 = np.broadcast_to(np.asarray(model.b0, dtype=float)[None, :, None], (K, S, 1))
    values, levels = recurse(0, beta0)
    return values, np.concatenate(levels, axis=1)


def _require_two_agents(model: DecPOMDP) -> None:
    if model.num_agents != 2:
        raise ValueError(
            f"model: finite-horizon best responses support 2 agents, got {model.num_agents}"
        )


def best_response_tree(
    model: DecPOMDP, trees_of_others: Sequence[PolicyTree], agent: int, horizon: int
) -> tuple[PolicyTree, float]:
    """Exact best-response tree of ``agent`` to the other agent's fixed tree.

    Args:
        model: a 2-agent Dec-POMDP (γ = ``model.discount``, 1 allowed).
        trees_of_others: the other agents' trees in agent order (one tree for 2 agents).
        agent: the responding agent.
        horizon: h, at most the other trees' horizon.

    Returns:
        The best-response tree and the joint value it reaches.
    """
    _require_two_agents(model)
    if agent not in (0, 1):
        raise ValueError(f"agent must be 0 or 1, got {agent}")
    if len(trees_of_others) != 1:
        raise ValueError(f"trees_of_others: expected 1 tree, got {len(trees_of_others)}")
    other = 1 - agent
    _check_trees(model, trees_of_others, [other])
    if horizon < 1 or trees_of_others[0].horizon < horizon:
        raise ValueError(f"horizon must lie in [1, {trees_of_others[0].horizon}], got {horizon}")
    other_actions = trees_of_others[0].actions[: tree_size(model.num_observations[other], horizon)]
    values, actions = _best_response_batch(model, other_actions[None, :], agent, horizon)
    return PolicyTree(actions[0], model.num_observations[agent]), float(values[0])


def brute_force_optimum(
    model: DecPOMDP, horizon: int, max_trees: int = 200_000
) -> tuple[float, list[PolicyTree]]:
    """The exact finite-horizon optimum: every tree of one agent against the other's best response.

    The agent with fewer trees is enumerated (in vectorised batches).

    Args:
        model: a 2-agent Dec-POMDP.
        horizon: h >= 1.
        max_trees: refuse to enumerate more trees than this.

    Returns:
        The optimal value and an optimal joint policy (one tree per agent).
    """
    _require_two_agents(model)
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    sizes = [tree_size(model.num_observations[i], horizon) for i in range(2)]
    counts = [model.num_actions[i] ** sizes[i] for i in range(2)]
    enumerated = int(np.argmin(counts))
    agent = 1 - enumerated
    if counts[enumerated] > max_trees:
        raise ValueError(
            f"horizon: {counts[enumerated]} trees to enumerate at horizon {horizon}, over "
            f"max_trees={max_trees}"
        )
    shape = (model.num_actions[enumerated],) * sizes[enumerated]
    best_value: float = -np.inf
    best_trees: list[PolicyTree] | None = None
    for lo in range(0, counts[enumerated], _CHUNK):
        index = np.arange(lo, min(lo + _CHUNK, counts[enumerated]))
        candidates = np.stack(np.unravel_index(index, shape), axis=1)  # (K, tree size)
        values, responses = _best_response_batch(model, candidates, agent, horizon)
        k = int(np.argmax(values))
        if values[k] > best_value:
            best_value = float(values[k])
            enumerated_tree = PolicyTree(candidates[k], model.num_observations[enumerated])
            response_tree = PolicyTree(responses[k], model.num_observations[agent])
            best_trees = (
                [enumerated_tree, response_tree]
                if enumerated == 0
                else [response_tree, enumerated_tree]
            )
    return best_value, best_trees  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class FiniteJespResult:
    """Result of :func:`finite_jesp`.

    Attributes:
        value: the best joint value over restarts.
        trees: the joint policy reaching it.
        restart_values: the final value of each restart.
    """

    value: float
    trees: list[PolicyTree]
    restart_values: list[float] = field(default_factory=list)


def finite_jesp(
    model: DecPOMDP,
    horizon: int,
    restarts: int,
    rng: np.random.Generator,
    epsilon: float = 1e-9,
    max_iterations: int = 100,
) -> FiniteJespResult:
    """Finite-horizon JESP: alternating exact best responses from random trees, best of restarts.

    Each restart stops once every agent's best response fails to improve the value by more than
    ``epsilon`` (a Nash equilibrium), or after ``max_iterations`` best responses.
    """
    _require_two_agents(model)
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    best: tuple[float, list[PolicyTree]] | None = None
    restart_values = []
    for _ in range(restarts):
        trees = [
            PolicyTree.random(model.num_actions[i], model.num_observations[i], horizon, rng)
            for i in range(2)
        ]
        value = evaluate_trees(model, trees, horizon)
        agent, non_improving, accepted = 0, 0, False
        for _ in range(max_iterations):
            if non_improving >= (1 if accepted else 2):
                break
            response, response_value = best_response_tree(model, [trees[1 - agent]], agent, horizon)
            if response_value > value + epsilon:
                trees[agent], value, non_improving, accepted = response, response_value, 0, True
            else:
                non_improving += 1
            agent = 1 - agent
        restart_values.append(value)
        if best is None or value > best[0]:
            best = (value, list(trees))
    assert best is not None  # restarts >= 1 was checked above
    return FiniteJespResult(value=best[0], trees=best[1], restart_values=restart_values)
