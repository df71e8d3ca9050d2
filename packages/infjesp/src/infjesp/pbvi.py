"""A point-based solver for best-response POMDPs in numpy/scipy ("SARSOP-lite", design doc §2.3).

* **Lower bound**: α-vectors, started from the blind policies ("always play a"), improved by
  point-based backups at the beliefs collected so far, one belief at a time along a trial and
  for all collected beliefs at once (vectorised) between trials; dominated and duplicate
  α-vectors are pruned (an α survives when it is the best one at some collected belief).
* **Upper bound**: the fast informed bound (FIB) on the corners, refined by a sawtooth point set
  (one point per HSVI update, corner updates near the corners, and a batched re-backup of all
  points between trials while that is cheap).
* **Belief collection**: HSVI forward trials from b0, choosing the action greedy w.r.t. the upper
  bound and the observation that maximises ``P(z)·(excess gap at the successor)``, stopping when
  the gap is below ``ε'/γ^depth``; both bounds are backed up along the trial on the way back.
  As in SARSOP, each trial aims at ``ε' = max(ε, gap(b0)/2)`` rather than at ε directly, which
  gives shallower trials and a broader belief set.

The observation of a best-response POMDP is a deterministic function of the next state
(``obs[e']``), so ``T[a][:, obs == z]`` is the whole ``(a, z)`` projection.

Shape legend: E extended states, A actions, Z observations, K α-vectors, B beliefs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from infjesp.bestresponse import BestResponsePOMDP
from infjesp.errors import InfJespError

__all__ = ["AlphaVectors", "PolicyGraph", "SolveResult", "fib_upper_bound", "solve"]

_TRIAL_GAP_FRACTION = 0.5
# Stop the fast informed bound's iteration here: every iterate is an upper bound (see _fib).
_FIB_TOL = 1e-6
# Successor beliefs per upper-bound sweep over all stored points (skipped when larger).
_SWEEP_BUDGET = 4000
# Above this many (query, point entry) pairs the sawtooth first filters the points per query.
_DENSE_SAWTOOTH = 2_000_000


@dataclass(frozen=True, eq=False)
class AlphaVectors:
    """A set of α-vectors with their actions; ``V(b) = max_k α_k · b``.

    Attributes:
        alphas: ``(K, E)`` float.
        actions: ``(K,)`` int, the action of each α-vector.
    """

    alphas: np.ndarray
    actions: np.ndarray

    def value(self, b: np.ndarray) -> float:
        """The lower-bound value ``max_k α_k · b`` of belief ``b`` (``(E,)``)."""
        return float((self.alphas @ b).max())

    def best(self, b: np.ndarray) -> int:
        """Index of the α-vector that is maximal at ``b`` (the first one on ties)."""
        return int(np.argmax(self.alphas @ b))

    def __len__(self) -> int:
        return int(self.actions.size)


@dataclass(frozen=True, eq=False)
class SolveResult:
    """Outcome of :func:`solve`.

    Attributes:
        alphas: The lower-bound α-vectors.
        lower: Lower bound at b0 (the α-value, achievable by the α policy).
        upper: Upper bound at b0.
        beliefs: Number of collected beliefs.
        iterations: Number of HSVI trials.
        seconds: Wall time.
        converged: Whether ``upper - lower < epsilon`` at b0.
    """

    alphas: AlphaVectors
    lower: float
    upper: float
    beliefs: int
    iterations: int
    seconds: float
    converged: bool = False
    graph: PolicyGraph | None = None


@dataclass(frozen=True, eq=False)
class PolicyGraph:
    """Where every α-vector came from: the policy graph whose node values they bound.

    Every α-vector the solver ever made is a node ``k`` with an action ``actions[k]`` and, per
    own observation z, the node ``links[k, z]`` whose α-vector its backup used:
    ``α_k = R[:, a_k] + γ Σ_z M[a_k][z] α_{links[k, z]}`` at the time it was made (a blind
    α-vector links to itself and is the exact value of always playing its action). α-vectors are
    never changed after they are made, so by induction every α_k is at most the value of the
    controller "start at node k, play ``actions``, move along ``links``": following the links
    from ``ids[argmax_k α_k·b0]`` gives an FSC worth at least the lower bound at b0 — a
    lossless extraction, unlike the greedy belief-by-belief one.

    Attributes:
        actions: ``(G,)`` int, the action of every node ever made.
        links: ``(G, Z)`` int, the successor node of every node on every own observation.
        ids: ``(K,)`` int, the node of each final α-vector (rows of ``SolveResult.alphas``).
    """

    actions: np.ndarray
    links: np.ndarray
    ids: np.ndarray

    def reachable_from(self, node: int, limit: int) -> np.ndarray | None:
        """The nodes reachable from ``node`` in BFS order, or None when there are over ``limit``."""
        order = [node]
        seen = {node}
        for current in order:
            for successor in self.links[current]:
                successor = int(successor)
                if successor not in seen:
                    if len(order) >= limit:
                        return None
                    seen.add(successor)
                    order.append(successor)
        return np.array(order, dtype=np.int64)


class _Model:
    """Precomputed matrices of a best-response POMDP."""

    def __init__(self, br: BestResponsePOMDP) -> None:
        self.E, self.A, self.Z = br.num_states, br.num_actions, br.num_observations
        self.gamma = float(br.discount)
        self.R = np.asarray(br.R, dtype=float)  # (E, A)
        self.T = [scipy.sparse.csr_matrix(t) for t in br.T]
        self.TT = [t.T.tocsr() for t in self.T]  # (E', E) for belief propagation
        self.obs = np.asarray(br.obs)
        self.obs_or0 = np.where(self.obs < 0, 0, self.obs)  # "none" never is a successor
        masks = [(self.obs == z).astype(float) for z in range(self.Z)]
        # M[a][z] = T[a] restricted to the columns whose stored observation is z.
        self.M = [[(t @ scipy.sparse.diags(mask)).tocsr() for mask in masks] for t in self.T]
        self.onehot = np.zeros((self.E, self.Z))  # (E, Z) selector of obs
        valid = self.obs >= 0
        self.onehot[np.flatnonzero(valid), self.obs[valid]] = 1.0
        self.TT_stack = scipy.sparse.vstack(self.TT).tocsr()  # (A·E', E)
        self.T_row = scipy.sparse.hstack(self.T).tocsr()  # (E, A·E'): row e = successors of e

    def successors(self, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All successors of ``b``: probabilities ``(A, Z)`` and beliefs ``(A, Z, E)``."""
        w = (self.TT_stack @ b).reshape(self.A, self.E)  # unnormalised successors per action
        probs = w @ self.onehot  # (A, Z)
        nexts = w[:, None, :] * self.onehot.T[None, :, :]  # (A, Z, E)
        safe = np.where(probs > 0, probs, 1.0)
        return probs, nexts / safe[:, :, None]


def fib_upper_bound(
    br: BestResponsePOMDP, tol: float = 1e-9, max_iter: int = 100_000
) -> np.ndarray:
    """The fast informed bound ``Q (E, A)``: ``Q(e,a) = R(e,a) + γ Σ_z max_a' Σ_e' M_az Q(·,a')``.

    Raises:
        InfJespError: When the discount is >= 1.
    """
    _check_discount(br)
    return _fib(_Model(br), tol, max_iter)


def _fib(m: _Model, tol: float, max_iter: int) -> np.ndarray:
    # Start from the trivial upper value max R / (1 - γ) and iterate (a γ-contraction). The
    # operator is monotone and the start lies above its fixed point, so every iterate is an
    # upper bound: stopping early (a larger ``tol``) only loosens it.
    stacked = scipy.sparse.vstack([m.M[a][z] for a in range(m.A) for z in range(m.Z)]).tocsr()
    Q = np.full((m.E, m.A), float(m.R.max()) / (1.0 - m.gamma))
    for _ in range(max_iter):
        P = np.asfortranarray(stacked @ Q)  # (A·Z·E', A'): column a' contiguous
        best = np.maximum.reduce([P[:, a] for a in range(m.A)]).reshape(m.A, m.Z, m.E)
        new = m.R + m.gamma * best.sum(axis=1).T
        delta = float(np.abs(new - Q).max())
        Q = new
        if delta * m.gamma / (1.0 - m.gamma) < tol:
            break
    return Q


def _blind_alphas(m: _Model) -> np.ndarray:
    """``(A, E)``: value of always playing ``a``, ``(I - γ T_a)^{-1} R[:, a]``."""
    eye = scipy.sparse.identity(m.E, format="csc")
    out = np.empty((m.A, m.E))
    for a in range(m.A):
        out[a] = scipy.sparse.linalg.spsolve((eye - m.gamma * m.T[a]).tocsc(), m.R[:, a])
    return out


def _check_discount(br: BestResponsePOMDP) -> None:
    if not 0.0 <= br.discount < 1.0:
        raise InfJespError(
            f"solving a best-response POMDP needs a discount in [0, 1), got {br.discount:g}; "
            "pass --discount 0.9"
        )


class _Upper:
    """Sawtooth upper bound: corner values plus a set of (belief, value) points."""

    def __init__(self, corners: np.ndarray) -> None:
        self.corners = corners.copy()  # (E,)
        self._cols: list[np.ndarray] = []
        self._vals: list[np.ndarray] = []
        self._value: list[float] = []
        self._index: dict[bytes, int] = {}
        self._cache: tuple[scipy.sparse.csr_matrix, scipy.sparse.csr_matrix] | None = None
        self._delta: np.ndarray | None = None  # value − b·corners per point

    def __len__(self) -> int:
        return len(self._value)

    def add(self, b: np.ndarray, value: float, current: float | None = None) -> None:
        """Add the point ``(b, value)`` if it lowers the bound at ``b`` (``current``, if known)."""
        if current is None:
            current = float(self.values(b[None])[0])
        if value >= current - 1e-12 or value >= float(b @ self.corners):
            return
        key = np.round(b, 12).tobytes()
        index = self._index.get(key)
        if index is not None:  # the same belief again: lower its value in place
            self._value[index] = min(self._value[index], value)
            self._delta = None
            return
        self._index[key] = len(self._value)
        cols = np.flatnonzero(b > 0)
        self._cols.append(cols)
        self._vals.append(b[cols])
        self._value.append(value)
        self._cache = None
        self._delta = None

    def point_beliefs(self) -> np.ndarray:
        """``(points, E)`` dense matrix of the point beliefs."""
        if not self._value:
            return np.zeros((0, self.corners.size))
        return self._matrices()[0].toarray()

    def lower_values(self, values: np.ndarray) -> None:
        """Lower every point's value to ``values`` where that is lower."""
        current = np.array(self._value)
        if np.any(values < current - 1e-12):
            self._value = list(np.minimum(current, values))
            self._delta = None

    def lower_corner(self, e: int, value: float) -> None:
        """Lower the corner value of state ``e`` to ``value`` (if lower)."""
        if value < self.corners[e] - 1e-12:
            self.corners[e] = value
            self._delta = None

    def _matrices(self) -> tuple[scipy.sparse.csr_matrix, scipy.sparse.csr_matrix]:
        """The points ``(points, E)`` and their 0/1 support pattern, as CSR (cached)."""
        if self._cache is None:
            lengths = np.array([c.size for c in self._cols])
            indptr = np.concatenate([[0], np.cumsum(lengths)])
            cols = np.concatenate(self._cols)
            vals = np.concatenate(self._vals)
            shape = (len(self._cols), self.corners.size)
            points = scipy.sparse.csr_matrix((vals, cols, indptr), shape=shape)
            pattern = scipy.sparse.csr_matrix((np.ones_like(vals), cols, indptr), shape=shape)
            self._cache = (points, pattern)
        return self._cache

    def values(self, beliefs: np.ndarray) -> np.ndarray:
        """Upper bound of each row of ``beliefs`` (``(Q, E)``).

        A point j contributes ``φ_j·δ_j`` with ``φ_j = min_{e ∈ supp(b_j)} b(e)/b_j(e)``, which is 0
        unless ``supp(b_j) ⊆ supp(b)``; a sparse pattern product finds those points first.
        """
        base = beliefs @ self.corners
        if not self._value:
            return base
        points, pattern = self._matrices()
        if self._delta is None:
            self._delta = np.minimum(0.0, np.array(self._value) - points @ self.corners)
        indptr, cols, vals = points.indptr, points.indices, points.data
        # Only non-zero queries, and only points inside the union of their supports, can count.
        rows = np.flatnonzero(np.any(beliefs > 0, axis=1))
        if not rows.size:
            return base
        union = np.any(beliefs[rows] > 0, axis=0)
        inside = np.flatnonzero(pattern @ (~union).astype(float) == 0)
        if not inside.size:
            return base
        if rows.size * int((indptr[inside + 1] - indptr[inside]).sum()) <= _DENSE_SAWTOOTH:
            lengths = indptr[inside + 1] - indptr[inside]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            gather = np.arange(int(lengths.sum())) + np.repeat(indptr[inside] - starts, lengths)
            ratio = beliefs[rows][:, cols[gather]] / vals[gather]
            phi = np.minimum.reduceat(ratio, starts, axis=1)  # (rows, inside)
            out = base.copy()
            out[rows] += np.minimum(0.0, (phi * self._delta[inside]).min(axis=1))
            return out
        outside = pattern @ (beliefs <= 0).T.astype(float)  # (points, Q): support misses
        out = base.copy()
        for q in range(beliefs.shape[0]):
            candidates = np.flatnonzero(outside[:, q] == 0)
            if not candidates.size:
                continue
            lengths = indptr[candidates + 1] - indptr[candidates]
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            gather = np.arange(int(lengths.sum())) + np.repeat(indptr[candidates] - starts, lengths)
            ratio = beliefs[q, cols[gather]] / vals[gather]
            phi = np.minimum.reduceat(ratio, starts)
            out[q] += min(0.0, float((phi * self._delta[candidates]).min()))
        return out


class _Solver:
    def __init__(self, br: BestResponsePOMDP) -> None:
        self.m = _Model(br)
        m = self.m
        blind = _blind_alphas(m)
        self._buffer = blind.copy()  # α-vectors live in the first ``self._count`` rows
        self._buffer_actions = np.arange(m.A)
        self._buffer_ids = np.arange(m.A)  # policy-graph node of each α-vector
        self._count = m.A
        # The policy graph (PolicyGraph): a node per α-vector ever made; blind ones loop.
        self._node_actions = [np.arange(m.A)]
        self._node_links = [np.repeat(np.arange(m.A)[:, None], m.Z, axis=1)]
        self._num_nodes = m.A
        self.upper = _Upper(_fib(m, _FIB_TOL, 100_000).max(axis=1))
        self.beliefs: list[np.ndarray] = []
        self._belief_keys: set[bytes] = set()

    # ------------------------------------------------------------------ α storage
    @property
    def alphas(self) -> np.ndarray:
        return self._buffer[: self._count]

    @property
    def actions(self) -> np.ndarray:
        return self._buffer_actions[: self._count]

    @property
    def ids(self) -> np.ndarray:
        return self._buffer_ids[: self._count]

    def new_nodes(self, actions: np.ndarray, links: np.ndarray) -> np.ndarray:
        """Add policy-graph nodes (``links`` already node ids); returns their ids."""
        actions = np.asarray(actions, dtype=np.int64).reshape(-1)
        links = np.asarray(links, dtype=np.int64).reshape(actions.size, self.m.Z)
        ids = np.arange(self._num_nodes, self._num_nodes + actions.size)
        self._node_actions.append(actions)
        self._node_links.append(links)
        self._num_nodes += actions.size
        return ids

    def graph(self) -> PolicyGraph:
        actions = np.concatenate(self._node_actions)
        links = np.vstack(self._node_links)
        self._node_actions, self._node_links = [actions], [links]
        return PolicyGraph(actions, links, self.ids.copy())

    def set_alphas(self, alphas: np.ndarray, actions: np.ndarray, ids: np.ndarray) -> None:
        self._buffer = np.array(alphas, dtype=float)
        self._buffer_actions = np.array(actions, dtype=np.int64)
        self._buffer_ids = np.array(ids, dtype=np.int64)
        self._count = len(actions)

    def append_alpha(self, alpha: np.ndarray, action: int, links: np.ndarray) -> None:
        """Add an α-vector whose backup used the α-vectors of rows ``links`` (one per z)."""
        node = int(self.new_nodes(np.array([action]), self.ids[links][None, :])[0])
        if self._count == len(self._buffer):  # grow geometrically: amortised O(1) appends
            grow = max(16, self._count)
            self._buffer = np.vstack([self._buffer, np.empty((grow, self._buffer.shape[1]))])
            self._buffer_actions = np.concatenate(
                [self._buffer_actions, np.zeros(grow, dtype=np.int64)]
            )
            self._buffer_ids = np.concatenate([self._buffer_ids, np.zeros(grow, dtype=np.int64)])
        self._buffer[self._count] = alpha
        self._buffer_actions[self._count] = action
        self._buffer_ids[self._count] = node
        self._count += 1

    def seed(self, alphas: np.ndarray, actions: np.ndarray, links: np.ndarray) -> None:
        """Add a controller's exact node values as α-vectors (``links``: its own node indices)."""
        first = self._num_nodes
        ids = self.new_nodes(actions, np.asarray(links) + first)
        self.set_alphas(
            np.vstack([self.alphas, alphas]),
            np.concatenate([self.actions, actions]),
            np.concatenate([self.ids, ids]),
        )

    # ------------------------------------------------------------------ bounds
    def lower_value(self, beliefs: np.ndarray) -> np.ndarray:
        return (beliefs @ self.alphas.T).max(axis=-1)

    def add_belief(self, b: np.ndarray) -> None:
        key = np.round(b, 12).tobytes()
        if key not in self._belief_keys:
            self._belief_keys.add(key)
            self.beliefs.append(b)

    def backup_point(self, b: np.ndarray) -> None:
        """Point-based backup of the lower bound at ``b``; adds the α if it improves at ``b``.

        Only the support of ``b`` and of its successors enters (beliefs are sparse on the
        near-deterministic problems, e.g. Mars), so the cost is ``K·|supp|`` rather than ``K·E``.
        """
        m = self.m
        supp = np.flatnonzero(b)
        indptr = m.T_row.indptr
        lengths = indptr[supp + 1] - indptr[supp]
        offsets = np.repeat(indptr[supp] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        entries = np.arange(int(lengths.sum())) + offsets
        cols = m.T_row.indices[entries]  # a·E + e' of every successor entry
        vals = m.T_row.data[entries] * np.repeat(b[supp], lengths)
        succ = cols % m.E
        spread = np.zeros((cols.size, m.A * m.Z))  # entry -> its (a, z) bucket, weighted
        spread[np.arange(cols.size), (cols // m.E) * m.Z + m.obs_or0[succ]] = vals
        proj = self.alphas[:, succ] @ spread  # (K, A·Z)
        proj = proj.reshape(-1, m.A, m.Z)
        q = b[supp] @ m.R[supp] + m.gamma * proj.max(axis=0).sum(axis=1)  # (A,)
        a = int(np.argmax(q))
        if q[a] <= float((self.alphas[:, supp] @ b[supp]).max()) + 1e-12:
            return
        chosen = proj[:, a, :].argmax(axis=0)  # (Z,)
        g = self.alphas[chosen[m.obs_or0], np.arange(m.E)]  # (E,)
        alpha = m.R[:, a] + m.gamma * (m.T[a] @ g)
        self.append_alpha(alpha, a, chosen)

    def lower_value_sparse(self, beliefs: np.ndarray) -> np.ndarray:
        """:meth:`lower_value` of ``(Q, E)`` beliefs over the union of their supports only."""
        cols = np.flatnonzero(np.any(beliefs != 0, axis=0))
        if not cols.size:
            return np.zeros(beliefs.shape[0])
        return (beliefs[:, cols] @ self.alphas[:, cols].T).max(axis=1)

    def upper_sweep(self, budget: int) -> None:
        """Back up the upper bound at every stored point (and corner) at once, within budget.

        ``budget`` caps the number of successor beliefs (points·A·Z·E entries / E) evaluated.
        """
        m = self.m
        points = self.upper.point_beliefs()
        with_corners = (len(points) + m.E) * m.A * m.Z <= budget
        if with_corners:
            points = np.vstack([points, np.eye(m.E)])
        n = len(points)
        if n == 0 or n * m.A * m.Z > budget:
            return
        w = (m.TT_stack @ points.T).reshape(m.A, m.E, n).transpose(2, 0, 1)  # (n, A, E)
        probs = w @ m.onehot  # (n, A, Z)
        nexts = w[:, :, None, :] * m.onehot.T[None, None, :, :]  # (n, A, Z, E)
        nexts /= np.where(probs > 0, probs, 1.0)[:, :, :, None]
        ub_next = self.upper.values(nexts.reshape(-1, m.E)).reshape(n, m.A, m.Z)
        q = points @ m.R + m.gamma * (probs * ub_next).sum(axis=2)  # (n, A)
        new = q.max(axis=1)
        if with_corners:
            for e in np.flatnonzero(new[n - m.E :] < self.upper.corners - 1e-12):
                self.upper.lower_corner(int(e), float(new[n - m.E + e]))
            new = new[: n - m.E]
        self.upper.lower_values(new)

    def backup_all(self) -> None:
        """One vectorised point-based backup at every collected belief, then prune."""
        m = self.m
        B = scipy.sparse.csr_matrix(np.array(self.beliefs))  # (B, E)
        nb = B.shape[0]
        values = np.empty((nb, m.A))
        chosen = np.empty((m.A, m.Z, nb), dtype=np.int64)
        for a in range(m.A):
            values[:, a] = B @ m.R[:, a]
            for z in range(m.Z):
                proj = np.asarray((B @ m.M[a][z]) @ self.alphas.T)  # (B, K)
                chosen[a, z] = proj.argmax(axis=1)
                values[:, a] += m.gamma * proj.max(axis=1)
        best = values.argmax(axis=1)
        new_alphas = np.empty((nb, m.E))
        new_links = np.empty((nb, m.Z), dtype=np.int64)
        cols = np.arange(m.E)[:, None]
        for a in range(m.A):
            which = np.flatnonzero(best == a)
            if not which.size:
                continue
            G = self.alphas[chosen[a][:, which][m.obs_or0], cols]  # (E, |which|)
            new_alphas[which] = (m.R[:, a][:, None] + m.gamma * (m.T[a] @ G)).T
            new_links[which] = chosen[a][:, which].T
        # keep only the new α-vectors that survive pruning as graph nodes (the others vanish)
        candidates = np.vstack([self.alphas, new_alphas])
        keep = np.unique(np.asarray(B @ candidates.T).argmax(axis=1))
        old = self._count
        fresh = keep[keep >= old] - old
        ids = np.empty(old + nb, dtype=np.int64)
        ids[:old] = self.ids
        ids[old + fresh] = self.new_nodes(best[fresh], self.ids[new_links[fresh]])
        self.set_alphas(candidates[keep], np.concatenate([self.actions, best])[keep], ids[keep])

    def prune(self) -> None:
        """Keep the α-vectors that are maximal at some collected belief (no duplicates)."""
        if not self.beliefs:
            return
        B = scipy.sparse.csr_matrix(np.array(self.beliefs))
        keep = np.unique(np.asarray(B @ self.alphas.T).argmax(axis=1))
        self.set_alphas(self.alphas[keep], self.actions[keep], self.ids[keep])

    # ------------------------------------------------------------------ trials
    def trial(
        self, b0: np.ndarray, epsilon: float, max_depth: int, deadline: float = math.inf
    ) -> int:
        """One HSVI trial from b0 (the descent stops early past ``deadline``); returns its depth."""
        m = self.m
        path: list[np.ndarray] = []
        b = b0
        depth = 0
        ub = float(self.upper.values(b[None])[0])
        while depth < max_depth and time.perf_counter() < deadline:
            lb = float(self.lower_value_sparse(b[None])[0])
            threshold = epsilon / m.gamma**depth
            if ub - lb <= threshold:
                break
            probs, nexts = m.successors(b)
            flat = nexts.reshape(-1, m.E)
            ub_next = self.upper.values(flat).reshape(m.A, m.Z)
            q_upper = b @ m.R + m.gamma * (probs * ub_next).sum(axis=1)
            a = int(np.argmax(q_upper))
            self.upper.add(b, float(q_upper[a]), ub)
            path.append(b)
            self.add_belief(b)
            lb_next = self.lower_value_sparse(nexts[a])
            score = probs[a] * (ub_next[a] - lb_next - threshold / m.gamma)
            z = int(np.argmax(score))
            if probs[a, z] <= 0 or score[z] <= 0:
                break
            b = nexts[a, z]
            ub = float(ub_next[a, z])
            depth += 1
        for b in reversed(path):
            self.backup_point(b)
            probs, nexts = m.successors(b)
            ub_next = self.upper.values(nexts.reshape(-1, m.E)).reshape(m.A, m.Z)
            q_upper = b @ m.R + m.gamma * (probs * ub_next).sum(axis=1)
            self.upper.add(b, float(q_upper.max()))
            e = int(np.argmax(b))
            if b[e] > 0.99:  # near a corner: back up the corner itself (HSVI corner update)
                self.corner_update(e)
        return depth

    def corner_update(self, e: int) -> None:
        m = self.m
        corner = np.zeros(m.E)
        corner[e] = 1.0
        probs, nexts = m.successors(corner)
        ub_next = self.upper.values(nexts.reshape(-1, m.E)).reshape(m.A, m.Z)
        q_upper = m.R[e] + m.gamma * (probs * ub_next).sum(axis=1)
        self.upper.lower_corner(e, float(q_upper.max()))


def solve(
    br: BestResponsePOMDP,
    *,
    epsilon: float = 1e-4,
    max_beliefs: int = 2000,
    max_iterations: int = 10_000,
    time_limit: float | None = None,
    rng: np.random.Generator | int | None = None,
    stall_rounds: int | None = 5,
    stall_tolerance: float = 1e-6,
    stall_min_beliefs: int = 500,
    initial: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> SolveResult:
    """Solve a best-response POMDP from its b0 with HSVI-guided point-based backups.

    Args:
        br: The POMDP (discount < 1).
        epsilon: Target gap ``upper − lower`` at b0.
        max_beliefs: Stop once this many beliefs are collected.
        max_iterations: Maximum number of HSVI trials.
        time_limit: Wall-clock budget in seconds, or None. It is checked during the descent of a
            trial and between trials; the backups after it (and the model set-up) still run, so
            the call can overrun by one backup sweep.
        rng: Accepted for API symmetry; the solver is deterministic and does not draw from it.
        stall_rounds: Stall-based stop: after each batched lower-bound backup the lower bound
            at b0 is recorded, and the solve stops (``converged=False``) once it has improved by
            less than ``stall_tolerance · max(1, |lower|)`` over the last ``stall_rounds`` batched
            backups while at least ``stall_min_beliefs`` beliefs are collected. The upper bound
            often converges much more slowly than the lower bound, so this saves time that would
            not improve the policy. None disables the check (run to ε or a limit).
        stall_tolerance: Relative improvement below which the lower bound counts as stalled.
        stall_min_beliefs: Beliefs to collect before the stall check may stop the solve.
        initial: ``(alphas (K, E), actions (K,), links (K, Z))``: a controller's exact node
            values, added to the lower bound from the start with their own links (e.g. the
            agent's current FSC, so the lower bound at b0 starts at the current joint value and
            the policy graph can only improve on it).

    Returns:
        The α-vectors and the bounds at b0.

    Raises:
        InfJespError: When the discount is >= 1.
        ValueError: On a non-positive ``epsilon``, ``max_beliefs`` or ``max_iterations``, or
            on ``stall_rounds < 1``.
    """
    del rng
    if stall_rounds is not None and stall_rounds < 1:
        raise ValueError(f"stall_rounds must be >= 1 or None, got {stall_rounds!r}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon!r}")
    if max_beliefs < 1 or max_iterations < 1:
        raise ValueError("max_beliefs and max_iterations must be >= 1")
    _check_discount(br)
    started = time.perf_counter()
    solver = _Solver(br)
    if initial is not None:
        solver.seed(*initial)
    gamma = solver.m.gamma
    b0 = np.asarray(br.b0, dtype=float)
    span = float(np.abs(solver.upper.corners).max() + np.abs(solver.alphas).max())
    if gamma > 0 and span > 0:
        max_depth = int(min(1000, max(1, math.ceil(math.log(epsilon / span) / math.log(gamma)))))
    else:
        max_depth = 1
    deadline = math.inf if time_limit is None else started + float(time_limit)
    solver.add_belief(b0)
    iterations = 0
    last_full = 0
    converged = False
    history: list[float] = []  # lower bound at b0 after each batched backup
    while True:
        ub0 = float(solver.upper.values(b0[None])[0])
        lb0 = float(solver.lower_value(b0))
        if ub0 - lb0 < epsilon:
            converged = True
            break
        if iterations >= max_iterations or len(solver.beliefs) >= max_beliefs:
            break
        if time.perf_counter() > deadline:
            break
        # Like SARSOP, aim each trial at a fraction of the current gap rather than at epsilon:
        # shallower trials, more of them, the same limit.
        target = max(epsilon, _TRIAL_GAP_FRACTION * (ub0 - lb0))
        solver.trial(b0, target, max_depth, deadline)
        iterations += 1
        if len(solver.beliefs) >= max(16, int(1.2 * last_full)) or iterations % 20 == 0:
            solver.backup_all()
            solver.upper_sweep(_SWEEP_BUDGET)
            last_full = len(solver.beliefs)
            if stall_rounds is not None:
                history.append(float(solver.lower_value(b0)))
                if (
                    len(history) > stall_rounds
                    and len(solver.beliefs) >= stall_min_beliefs
                    and history[-1] - history[-1 - stall_rounds]
                    < stall_tolerance * max(1.0, abs(history[-1]))
                ):
                    break
    if len(solver.beliefs) > last_full:
        solver.backup_all()
    ub0 = float(solver.upper.values(b0[None])[0])
    lb0 = float(solver.lower_value(b0))
    alphas = solver.alphas.copy()
    actions = solver.actions.copy()
    alphas.setflags(write=False)
    actions.setflags(write=False)
    return SolveResult(
        alphas=AlphaVectors(alphas, actions),
        lower=lb0,
        upper=ub0,
        beliefs=len(solver.beliefs),
        iterations=iterations,
        seconds=time.perf_counter() - started,
        converged=converged or ub0 - lb0 < epsilon,
        graph=solver.graph(),
    )
