"""The best-response POMDP of one agent against the other agents' fixed FSCs (design doc §2.2).

Agent i plays against deterministic FSCs of the other agents. Its decision problem is a POMDP
over extended states ``e = (s, n_{-i}, z_i)``: the world state, the others' joint node and agent
i's own LAST observation (a "none" value, stored as ``-1``, only at t = 0). Keeping z_i in the
state makes the observation function deterministic and Markov: ``O_e(z | a_i, e') = 1[z = z_i']``.

* ``T_e((s,n,·), a_i, (s',n',z')) = T(s'|s,⟨a_i,ψ(n)⟩) Σ_{z_{-i}} O(⟨z',z_{-i}⟩|⟨a_i,ψ(n)⟩,s')
  1[η(n,z_{-i}) = n']`` (the previous z_i does not enter).
* ``R_e((s,n,·), a_i) = R(s, ⟨a_i, ψ(n)⟩)``; ``b0_e(s, n^0, none) = b0(s)``.

Only the extended states reachable from ``b0_e`` are enumerated (a BFS over the sparsity pattern
of all actions), in increasing order of the full index ``((s·K + k)·(Z_i+1) + z)`` where the
"none" observation takes the slot ``Z_i``.

Shape legend:
    S    world states;  K  joint nodes of the other agents (flattened, last agent fastest)
    E    reachable extended states;  A  agent i's actions;  Z  agent i's observations
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from infjesp.fsc import FSC, check_fscs
from infjesp.model import DecPOMDP

__all__ = ["BestResponsePOMDP", "build_best_response"]


@dataclass(frozen=True, eq=False)
class BestResponsePOMDP:
    """The POMDP of agent ``agent`` against the other agents' fixed FSCs.

    Attributes:
        agent: The optimising agent i.
        num_states: E, the number of reachable extended states.
        num_actions: A_i.
        num_observations: Z_i.
        T: One ``(E, E)`` CSR matrix per own action, ``T[a][e, e'] = T_e(e' | e, a)``; rows sum
            to 1.
        obs: ``(E,)`` int, the own observation z_i stored in each extended state (−1 = "none").
        R: ``(E, A)`` expected immediate reward.
        b0: ``(E,)`` initial belief.
        discount: γ.
        state_index: ``(E, 3)`` int, the ``(s, k, z_i)`` of each extended state (k the flattened
            joint node of the others, z_i = −1 for "none").
        other_sizes: Node counts of the other agents, in agent order (k is mixed radix over them).
    """

    agent: int
    num_states: int
    num_actions: int
    num_observations: int
    T: tuple[scipy.sparse.csr_matrix, ...]
    obs: np.ndarray
    R: np.ndarray
    b0: np.ndarray
    discount: float
    state_index: np.ndarray
    other_sizes: tuple[int, ...] = ()

    def successor(self, b: np.ndarray, action: int, observation: int) -> tuple[float, np.ndarray]:
        """Bayes update τ(b, a, z).

        Args:
            b: ``(E,)`` belief.
            action: Own action a.
            observation: Own observation z.

        Returns:
            ``(P(z | b, a), b')``; ``b'`` is all zeros when the probability is 0.
        """
        unnormalised = self.T[action].T @ b
        unnormalised[self.obs != observation] = 0.0
        p = float(unnormalised.sum())
        return p, (unnormalised / p if p > 0 else unnormalised)


def build_best_response(model: DecPOMDP, fscs: Sequence[FSC], agent: int) -> BestResponsePOMDP:
    """Build agent ``agent``'s best-response POMDP against ``fscs[j]`` for every ``j != agent``.

    ``fscs[agent]`` is ignored except for its shape check (pass any FSC of that agent).

    Args:
        model: The Dec-POMDP (its discount is copied; it may be 1 here, the solver refuses it).
        fscs: One deterministic FSC per agent.
        agent: The optimising agent i.

    Returns:
        The reachable-only extended POMDP.

    Raises:
        ValueError: When ``agent`` is out of range.
        FSCError: When the FSCs do not fit the model.
    """
    if isinstance(agent, bool) or not 0 <= int(agent) < model.num_agents:
        raise ValueError(f"agent must lie in [0, {model.num_agents}), got {agent!r}")
    agent = int(agent)
    check_fscs(model, fscs)
    others = [j for j in range(model.num_agents) if j != agent]
    other_sizes = tuple(fscs[j].num_nodes for j in others)
    S = model.num_states
    A = model.num_actions[agent]
    Z = model.num_observations[agent]
    K = math.prod(other_sizes)
    JO = model.num_joint_observations

    # Others' structure: per joint node k its actions, and its successor on each joint obs.
    nodes_OK = np.indices(other_sizes).reshape(len(others), K)  # (N-1, K)
    acts_OK = np.stack([fscs[j].actions[nodes_OK[m]] for m, j in enumerate(others)])
    obs_table = model.joint_observation_table()  # (JO, N)
    next_OKJO = np.stack(
        [
            fscs[j].transitions[nodes_OK[m][:, None], obs_table[:, j][None, :]]
            for m, j in enumerate(others)
        ]
    )
    next_KJO = (
        np.ravel_multi_index(tuple(next_OKJO), other_sizes)
        if others
        else np.zeros((1, JO), dtype=np.int64)
    )
    own_z_JO = obs_table[:, agent]
    k0 = int(np.ravel_multi_index(tuple(fscs[j].start for j in others), other_sizes))

    # Full index of (s, k, z): (s·K + k)·(Z+1) + z, with z = Z for "none".
    num_full = S * K * (Z + 1)
    T_dense = np.asarray(model.T)
    O_dense = np.asarray(model.O)
    per_action: list[scipy.sparse.csr_matrix] = []  # (S·K, num_full): rows are sources (s, k)
    R_SKA = np.empty((S, K, A))
    for a in range(A):
        full_actions = np.empty((model.num_agents, K), dtype=np.int64)
        full_actions[agent] = a
        for m, j in enumerate(others):
            full_actions[j] = acts_OK[m]
        ja_K = np.ravel_multi_index(tuple(full_actions), model.num_actions)
        R_SKA[:, :, a] = model.R[:, ja_K]
        rows, cols, vals = [], [], []
        for ja in np.unique(ja_K):
            s, s_next = np.nonzero(T_dense[ja])
            pair, jo = np.nonzero(O_dense[ja][s_next])
            s, s_next = s[pair], s_next[pair]
            prob = T_dense[ja, s, s_next] * O_dense[ja, s_next, jo]
            ks = np.flatnonzero(ja_K == ja)
            rows.append((s[None, :] * K + ks[:, None]).ravel())
            dest_k = next_KJO[ks][:, jo]  # (len(ks), nnz)
            cols.append(((s_next[None, :] * K + dest_k) * (Z + 1) + own_z_JO[jo][None, :]).ravel())
            vals.append(np.broadcast_to(prob, (ks.size, s.size)).ravel())
        per_action.append(
            scipy.sparse.coo_matrix(
                (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                shape=(S * K, num_full),
            ).tocsr()
        )

    # Reachable states: BFS over the union of the sparsity patterns.
    pattern = per_action[0].copy()
    for matrix in per_action[1:]:
        pattern = pattern + matrix
    pattern = pattern.tocsr()
    start_s = np.flatnonzero(model.b0 > 0)
    start_full = (start_s * K + k0) * (Z + 1) + Z
    reached = np.zeros(num_full, dtype=bool)
    reached[start_full] = True
    frontier = start_full
    seen_source = np.zeros(S * K, dtype=bool)
    while frontier.size:
        sources = np.unique(frontier // (Z + 1))
        sources = sources[~seen_source[sources]]
        seen_source[sources] = True
        if not sources.size:
            break
        successors = np.unique(pattern[sources].indices)
        frontier = successors[~reached[successors]]
        reached[frontier] = True

    full = np.flatnonzero(reached)  # increasing full index
    source = full // (Z + 1)
    z = full % (Z + 1)
    s_e, k_e = source // K, source % K
    obs = np.where(z == Z, -1, z).astype(np.int64)
    T = tuple(matrix[source][:, full].tocsr() for matrix in per_action)
    for matrix in T:
        matrix.sum_duplicates()
        matrix.sort_indices()
    b0 = np.where(z == Z, model.b0[s_e], 0.0) * (k_e == k0)
    state_index = np.stack([s_e, k_e, obs], axis=1).astype(np.int64)
    for array in (obs, b0, state_index):
        array.setflags(write=False)
    R = R_SKA[s_e, k_e]
    R.setflags(write=False)
    return BestResponsePOMDP(
        agent=agent,
        num_states=int(full.size),
        num_actions=A,
        num_observations=Z,
        T=T,
        obs=obs,
        R=R,
        b0=b0,
        discount=float(model.discount),
        state_index=state_index,
        other_sizes=other_sizes,
    )
