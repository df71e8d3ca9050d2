"""Initial joint FSCs for the JESP loop (design §2.6).

Every function returns one deterministic :class:`~infjesp.fsc.FSC` per agent.

* ``random``: MC-JESP's random controllers (node count uniform in ``1..max_nodes``).
* ``blind``: the open-loop best constant joint action, one node per agent.
* ``mdp``: most-likely-state MDP heuristic: at a belief b the node plays agent i's component of
  ``argmax_ja Q_MDP(argmax_s b(s), ja)``; successors use the one-sided belief update (as ``ma``).
* ``ma`` / ``md`` / ``ms``: MPOMDP-based controllers built by forward belief exploration from b0.
  The node's action is agent i's component of the centralised greedy joint action at b. The
  MPOMDP value is approximated (``value=``):

  - ``"pbvi"`` (default): a point-based lower bound of the MPOMDP (:func:`mpomdp_alpha_vectors`:
    PBVI on beliefs reachable from b0, started from the constant joint-action policies), and the
    joint action of a one-step look-ahead on it. Models whose dense ``T·O`` tensor would exceed
    ``_PBVI_MAX_ENTRIES`` entries (e.g. Mars, fireFighting) fall back to QMDP.
  - ``"qmdp"``: ``argmax_ja Σ_s b(s) Q_MDP(s, ja)`` (``mdp_q_values``), which ignores the value
    of information (on Dec-Tiger it opens a door after a single "hear").

  Neither is an exact MPOMDP solution (a follow-up). In the belief updates below, ``a`` is the
  whole centralised joint action chosen at b (the other agents are assumed to follow it).

  - ``ma``: the successor on own observation z_i follows the one-sided update, which marginalises
    the other agents' observations:
    ``b'(s') ∝ Σ_{z_-i} O(⟨z_i,z_-i⟩|a,s') Σ_s T(s'|s,a) b(s)`` (MC-JESP's
    ``GetNextBeliefsOneSidedUpdate``).
  - ``md``: the successor follows the single most likely joint observation ⟨z_i, z_-i*⟩ with
    ``z_-i* = argmax_{z_-i} P(⟨z_i,z_-i⟩ | b, a)`` (full joint-observation belief update).
  - ``ms``: MC-JESP's successor is stochastic, weighted by the joint-observation probabilities.
    Our FSCs are deterministic, so ``ms`` **samples** one ``z_-i ∝ P(⟨z_i,z_-i⟩ | b, a)`` per
    (node, z_i) with ``rng`` and follows the full update on ⟨z_i, z_-i⟩: a deterministic
    approximation.

  Beliefs closer than ``belief_gap`` in L1 (default 0.1) share a node; once ``max_nodes`` nodes
  exist, a new belief links to the closest existing node (MC-JESP's ``GiveSimilarNodeIndex``).
  A zero-probability observation links the node to itself.

* ``periodic``: the optimal finite-horizon joint policy (policy trees, exhaustive search over
  one agent's trees against the other's best response, at the model's discount), repeated: each
  leaf of a tree moves back to its root, so the controller replays its horizon-h plan forever.
  The horizon is the largest h <= ``PERIODIC_MAX_HORIZON`` whose trees fit ``max_nodes`` and
  whose exhaustive search enumerates at most ``PERIODIC_MAX_TREES`` trees (Dec-Tiger and
  Recycling: h = 3; GridSmall: h = 2; Mars: h = 1). It captures problems whose good policies
  "gather information for a few steps, act, start over": on Dec-Tiger at γ = 0.9 the repeated
  horizon-3 optimum (7 + 7 nodes) is worth 13.4486, the best-known value. Two agents only
  (the exhaustive search is two-agent); other models fall back to ``ma``.

* ``reactive``: the best memory-one joint controller: node 0 is the start, node k+1 is "my last
  observation was k", so only the Z_i + 1 node actions are free. Every joint choice is evaluated
  exactly when there are at most ``REACTIVE_MAX_JOINT`` of them; otherwise each agent's node
  actions are improved in turn (coordinate ascent from the best constant joint action) until no
  single change helps. On Recycling it finds the best-known 31.9291 (recharge first, then search
  little after o0 and big after o1) among 729 joint choices in about a second, an equilibrium
  random restarts rarely reach.

All builders are deterministic given their arguments (``rng`` only matters for ``random`` and
``ms``).
"""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable

import numpy as np

from infjesp.errors import InfJespError
from infjesp.finite import brute_force_optimum, tree_size
from infjesp.fsc import FSC, evaluate_value
from infjesp.model import DecPOMDP, best_constant_joint_action, mdp_q_values

__all__ = [
    "INITS",
    "blind_init",
    "build_init",
    "ma_init",
    "md_init",
    "mdp_init",
    "mpomdp_alpha_vectors",
    "ms_init",
    "periodic_init",
    "perturb_fsc",
    "random_init",
    "reactive_init",
    "trajectory_init",
]

INITS = frozenset(
    {"random", "blind", "mdp", "ma", "md", "ms", "periodic", "reactive", "trajectory", "resync"}
)

# The periodic init's search limits: horizon and the number of trees enumerated.
PERIODIC_MAX_HORIZON = 3
PERIODIC_MAX_TREES = 20_000
# The reactive init enumerates every joint choice up to this many, else it uses coordinate ascent.
REACTIVE_MAX_JOINT = 5_000
_REACTIVE_MAX_SWEEPS = 20

# Above this many entries of the dense (JA, JO, S, S') tensor, "pbvi" falls back to QMDP.
_PBVI_MAX_ENTRIES = 2_000_000
MPOMDP_VALUES = ("pbvi", "qmdp")

# What trajectory_init's controllers do on an unexpected observation.
_ON_SURPRISE = ("advance", "stay", "resync")

# Successor modes of the belief-exploration builder.
_ONE_SIDED, _MOST_LIKELY, _SAMPLED = "one-sided", "most-likely", "sampled"


def _check_max_nodes(max_nodes: int) -> int:
    if isinstance(max_nodes, bool) or not isinstance(max_nodes, int | np.integer) or max_nodes < 1:
        raise InfJespError(f"max_nodes must be an integer >= 1, got {max_nodes!r}")
    return int(max_nodes)


def random_init(model: DecPOMDP, max_nodes: int, rng: np.random.Generator) -> list[FSC]:
    """MC-JESP's random init: per agent, node count uniform in ``1..max_nodes``, random actions
    and random deterministic successors."""
    max_nodes = _check_max_nodes(max_nodes)
    return [
        FSC.random(model.num_actions[i], model.num_observations[i], max_nodes, rng)
        for i in range(model.num_agents)
    ]


def blind_init(model: DecPOMDP) -> list[FSC]:
    """One node per agent: agent i's component of the best constant joint action (open loop)."""
    _, joint_action = best_constant_joint_action(model)
    return [FSC.constant(a, model.num_observations[i]) for i, a in enumerate(joint_action)]


def _explore(
    model: DecPOMDP,
    agent: int,
    choose: Callable[[np.ndarray], int],
    successor_mode: str,
    max_nodes: int,
    belief_gap: float,
    rng: np.random.Generator | None,
) -> FSC:
    """Agent ``agent``'s FSC by breadth-first belief exploration from b0.

    Args:
        choose: Belief (S,) -> the centralised joint action index played there.
        successor_mode: How the belief after own observation z_i is formed (see module doc).
    """
    T = np.asarray(model.T, dtype=float)  # (JA, S, S')
    O = np.asarray(model.O, dtype=float)  # noqa: E741  (JA, S', JO)
    own_obs_JO = model.joint_observation_table()[:, agent]
    num_z = model.num_observations[agent]
    beliefs: list[np.ndarray] = [np.asarray(model.b0, dtype=float)]
    actions: list[int] = []
    successors: list[list[int]] = []
    queue: deque[int] = deque([0])
    while queue:
        node = queue.popleft()
        belief = beliefs[node]
        ja = choose(belief)
        while len(actions) <= node:
            actions.append(0)
            successors.append([node] * num_z)
        actions[node] = model.joint_action(ja)[agent]
        joint_SJ = (belief @ T[ja])[:, None] * O[ja]  # (S', JO): P(s', jo | b, a)
        prob_J = joint_SJ.sum(axis=0)
        row = [node] * num_z
        for z in range(num_z):
            columns = np.flatnonzero(own_obs_JO == z)
            mass = float(prob_J[columns].sum())
            if mass <= 1e-12:
                continue  # unreachable: self-loop
            if successor_mode == _ONE_SIDED:
                next_b = joint_SJ[:, columns].sum(axis=1)
            elif successor_mode == _MOST_LIKELY:
                next_b = joint_SJ[:, columns[int(np.argmax(prob_J[columns]))]]
            else:
                if rng is None:  # pragma: no cover - guarded by the callers
                    raise InfJespError("the sampled successor mode needs an rng")
                weights = prob_J[columns] / mass
                next_b = joint_SJ[:, columns[int(rng.choice(columns.size, p=weights))]]
            next_b = next_b / next_b.sum()
            gaps = np.array([np.abs(next_b - b).sum() for b in beliefs])
            closest = int(np.argmin(gaps))
            if gaps[closest] < belief_gap or len(beliefs) >= max_nodes:
                row[z] = closest
            else:
                beliefs.append(next_b)
                row[z] = len(beliefs) - 1
                queue.append(row[z])
        successors[node] = row
    return FSC(np.array(actions, dtype=np.int64), np.array(successors, dtype=np.int64)).reachable()


def mpomdp_alpha_vectors(
    model: DecPOMDP,
    *,
    max_beliefs: int = 100,
    merge_gap: float = 1e-3,
    max_iterations: int = 300,
    tol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Point-based (PBVI) lower bound of the centralised MPOMDP value.

    The belief set is b0, the state corners and a breadth-first exploration of the beliefs
    reachable from b0 under every joint action and joint observation (beliefs closer than
    ``merge_gap`` in L1 are merged; at most ``max_beliefs``). The α-vectors start from the exact
    values of the constant joint-action policies (a valid lower bound) and are backed up at every
    belief until the values at the beliefs change by less than ``tol·max(1, |V|)``.

    Returns:
        ``Gamma (K, S)`` α-vectors and ``G (JA, JO, S, S')`` with
        ``G[a, z, s, s'] = T(s'|s,a) O(z|a,s')`` (for one-step look-aheads).
    """
    model.require_infinite_horizon()
    gamma = model.discount
    T = np.asarray(model.T, dtype=float)
    O = np.asarray(model.O, dtype=float)  # noqa: E741
    R = np.asarray(model.R, dtype=float)
    num_s = model.num_states
    G = T[:, None, :, :] * np.transpose(O, (0, 2, 1))[:, :, None, :]  # (JA, JO, S, S')
    beliefs = [np.asarray(model.b0, dtype=float), *np.eye(num_s)]
    queue: deque[np.ndarray] = deque([beliefs[0]])
    while queue and len(beliefs) < max_beliefs:
        belief = queue.popleft()
        nexts = np.einsum("s,azst->azt", belief, G).reshape(-1, num_s)
        mass = nexts.sum(axis=1)
        for row in np.flatnonzero(mass > 1e-9):
            candidate = nexts[row] / mass[row]
            if min(np.abs(candidate - b).sum() for b in beliefs) >= merge_gap:
                beliefs.append(candidate)
                queue.append(candidate)
                if len(beliefs) >= max_beliefs:
                    break
    B = np.array(beliefs)  # (M, S)
    system = np.eye(num_s)[None] - gamma * T
    Gamma = np.linalg.solve(system, R.T[:, :, None])[:, :, 0]  # (JA, S) constant policies
    values = (B @ Gamma.T).max(axis=1)
    for _ in range(max_iterations):
        Gamma = _pbvi_backup(B, Gamma, G, R, gamma)
        new_values = (B @ Gamma.T).max(axis=1)
        change = float(np.abs(new_values - values).max())
        values = new_values
        if change <= tol * max(1.0, float(np.abs(values).max())):
            break
    return Gamma, G


def _pbvi_backup(
    B: np.ndarray, Gamma: np.ndarray, G: np.ndarray, R: np.ndarray, gamma: float
) -> np.ndarray:
    """One point-based backup of ``Gamma`` at every belief of ``B``; duplicates removed."""
    num_b = B.shape[0]
    best_value = np.full(num_b, -np.inf)
    best_alpha = np.zeros_like(B)
    for a in range(G.shape[0]):
        proj = Gamma @ np.transpose(G[a], (0, 2, 1))  # (JO, K, S)
        choice = (proj @ B.T).argmax(axis=1)  # (JO, M)
        alpha = R[:, a][None, :] + gamma * proj[np.arange(G.shape[1])[:, None], choice].sum(0)
        value = (alpha * B).sum(axis=1)
        better = value > best_value
        best_value[better] = value[better]
        best_alpha[better] = alpha[better]
    return np.unique(np.round(best_alpha, 12), axis=0)


def _lookahead_chooser(model: DecPOMDP) -> Callable[[np.ndarray], int]:
    """Greedy joint action by a one-step look-ahead on the PBVI MPOMDP value."""
    Gamma, G = mpomdp_alpha_vectors(model)
    gamma, R = model.discount, np.asarray(model.R, dtype=float)
    proj = np.einsum("azst,kt->azks", G, Gamma)  # (JA, JO, K, S)

    def choose(belief: np.ndarray) -> int:
        future = (proj @ belief).max(axis=2).sum(axis=1)  # (JA,)
        return int(np.argmax(belief @ R + gamma * future))

    return choose


def _qmdp_chooser(model: DecPOMDP) -> Callable[[np.ndarray], int]:
    Q_SA = mdp_q_values(model)
    return lambda belief: int(np.argmax(belief @ Q_SA))


def _value_chooser(model: DecPOMDP, value: str) -> Callable[[np.ndarray], int]:
    if value not in MPOMDP_VALUES:
        raise InfJespError(f"unknown MPOMDP value {value!r}; expected one of {MPOMDP_VALUES}")
    entries = model.num_joint_actions * model.num_joint_observations * model.num_states**2
    if value == "pbvi" and entries <= _PBVI_MAX_ENTRIES:
        return _lookahead_chooser(model)
    return _qmdp_chooser(model)


def _mls_chooser(model: DecPOMDP) -> Callable[[np.ndarray], int]:
    Q_SA = mdp_q_values(model)
    return lambda belief: int(np.argmax(Q_SA[int(np.argmax(belief))]))


def _mpomdp_init(
    model: DecPOMDP,
    choose: Callable[[np.ndarray], int],
    mode: str,
    max_nodes: int,
    belief_gap: float,
    rng: np.random.Generator | None,
) -> list[FSC]:
    max_nodes = _check_max_nodes(max_nodes)
    if not belief_gap >= 0.0:
        raise InfJespError(f"belief_gap must be >= 0, got {belief_gap!r}")
    return [
        _explore(model, i, choose, mode, max_nodes, belief_gap, rng)
        for i in range(model.num_agents)
    ]


def mdp_init(model: DecPOMDP, max_nodes: int = 50, belief_gap: float = 0.1) -> list[FSC]:
    """Most-likely-state MDP heuristic: the MDP-greedy joint action of the most likely state.

    Successors use the one-sided update, as in :func:`ma_init`.
    """
    return _mpomdp_init(model, _mls_chooser(model), _ONE_SIDED, max_nodes, belief_gap, None)


def ma_init(
    model: DecPOMDP,
    max_nodes: int = 50,
    rng: np.random.Generator | None = None,
    belief_gap: float = 0.1,
    value: str = "pbvi",
) -> list[FSC]:
    """MPOMDP-greedy actions (``value``: "pbvi" or "qmdp"), one-sided update (``rng`` unused)."""
    return _mpomdp_init(
        model, _value_chooser(model, value), _ONE_SIDED, max_nodes, belief_gap, None
    )


def md_init(
    model: DecPOMDP,
    max_nodes: int = 50,
    rng: np.random.Generator | None = None,
    belief_gap: float = 0.1,
    value: str = "pbvi",
) -> list[FSC]:
    """Like :func:`ma_init`, but successors follow the most likely joint observation."""
    return _mpomdp_init(
        model, _value_chooser(model, value), _MOST_LIKELY, max_nodes, belief_gap, None
    )


def ms_init(
    model: DecPOMDP,
    max_nodes: int = 50,
    rng: np.random.Generator | None = None,
    belief_gap: float = 0.1,
    value: str = "pbvi",
) -> list[FSC]:
    """Like :func:`md_init`, but the others' observation is sampled (``rng``; default seed 0)."""
    if rng is None:
        rng = np.random.default_rng(0)
    return _mpomdp_init(model, _value_chooser(model, value), _SAMPLED, max_nodes, belief_gap, rng)


def perturb_fsc(fsc: FSC, num_actions: int, max_nodes: int, rng: np.random.Generator) -> FSC:
    """A random neighbour of ``fsc`` (the "kick" of iterated local search).

    With probability 1/2 (or always, at ``max_nodes``) one random node gets another random
    action; otherwise a node is inserted: a random (node, observation) edge is redirected to a
    new node with a random action whose successors copy the edge's old target.

    Args:
        fsc: The controller to perturb.
        num_actions: The agent's number of actions.
        max_nodes: Node cap.
        rng: The random source.

    Returns:
        A new FSC (minimised).
    """
    actions = fsc.actions.copy()
    transitions = fsc.transitions.copy()
    n = fsc.num_nodes
    if n >= max_nodes or rng.random() < 0.5:
        if num_actions > 1:
            node = int(rng.integers(n))
            actions[node] = (actions[node] + rng.integers(1, num_actions)) % num_actions
    else:
        node, z = int(rng.integers(n)), int(rng.integers(fsc.num_observations))
        target = transitions[node, z]
        actions = np.append(actions, rng.integers(num_actions))
        transitions = np.vstack([transitions, transitions[target]])
        transitions[node, z] = n
    return FSC(actions, transitions, fsc.start).minimized()


def _reactive_fsc(actions: np.ndarray | tuple[int, ...], num_observations: int) -> FSC:
    """Node 0 starts; after observation k every node moves to node k + 1."""
    transitions = np.tile(np.arange(1, num_observations + 1), (num_observations + 1, 1))
    return FSC(np.asarray(actions, dtype=np.int64), transitions, 0)


def reactive_init(model: DecPOMDP, max_nodes: int = 50) -> list[FSC]:
    """The best memory-one joint controller (see the module docstring).

    Args:
        model: The Dec-POMDP.
        max_nodes: Node cap; when Z_i + 1 exceeds it for some agent, :func:`ma_init` is used.

    Returns:
        One FSC per agent with Z_i + 1 nodes (minimised).
    """
    max_nodes = _check_max_nodes(max_nodes)
    sizes = [z + 1 for z in model.num_observations]
    if max(sizes) > max_nodes:
        return ma_init(model, max_nodes)

    def value(choice: list[np.ndarray]) -> float:
        fscs = [_reactive_fsc(a, z) for a, z in zip(choice, model.num_observations, strict=True)]
        return evaluate_value(model, fscs)

    counts = [a**n for a, n in zip(model.num_actions, sizes, strict=True)]
    if math.prod(counts) <= REACTIVE_MAX_JOINT:
        families = [
            list(itertools.product(range(a), repeat=n))
            for a, n in zip(model.num_actions, sizes, strict=True)
        ]
        best, best_value = None, -math.inf
        for joint in itertools.product(*families):
            candidate = [np.array(actions) for actions in joint]
            v = value(candidate)
            if v > best_value:
                best, best_value = candidate, v
        assert best is not None  # at least one joint choice exists
        choice = best
    else:
        _, constant = best_constant_joint_action(model)
        choice = [np.full(n, a, dtype=np.int64) for a, n in zip(constant, sizes, strict=True)]
        best_value = value(choice)
        for _ in range(_REACTIVE_MAX_SWEEPS):
            improved = False
            for agent, actions in enumerate(choice):
                for node in range(actions.size):
                    for action in range(model.num_actions[agent]):
                        if action == actions[node]:
                            continue
                        old = int(actions[node])
                        actions[node] = action
                        v = value(choice)
                        if v > best_value + 1e-12 * max(1.0, abs(best_value)):
                            best_value, improved = v, True
                        else:
                            actions[node] = old
            if not improved:
                break
    return [
        _reactive_fsc(a, z).minimized() for a, z in zip(choice, model.num_observations, strict=True)
    ]


def periodic_horizon(model: DecPOMDP, max_nodes: int = 50) -> int:
    """The horizon :func:`periodic_init` uses for ``model`` (see the module docstring)."""
    best = 1
    for h in range(2, PERIODIC_MAX_HORIZON + 1):
        sizes = [tree_size(z, h) for z in model.num_observations]
        trees = min(a**size for a, size in zip(model.num_actions, sizes, strict=True))
        if max(sizes) <= max_nodes and trees <= PERIODIC_MAX_TREES:
            best = h
    return best


def periodic_init(model: DecPOMDP, max_nodes: int = 50, horizon: int | None = None) -> list[FSC]:
    """The optimal horizon-h joint policy trees, each leaf linked back to its root.

    Args:
        model: The Dec-POMDP (two agents; others get :func:`ma_init`).
        max_nodes: Node cap (the trees of the chosen horizon fit it).
        horizon: h; default :func:`periodic_horizon`.

    Returns:
        One FSC per agent (minimised; at most Σ_{t<h} Z_i^t nodes).
    """
    max_nodes = _check_max_nodes(max_nodes)
    if model.num_agents != 2:
        return ma_init(model, max_nodes)
    if horizon is None:
        horizon = periodic_horizon(model, max_nodes)
    if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
        raise InfJespError(f"horizon must be an integer >= 1, got {horizon!r}")
    _, trees = brute_force_optimum(model, horizon, max_trees=max(PERIODIC_MAX_TREES, 1))
    fscs = []
    for tree in trees:
        Z = tree.num_observations
        n = tree.actions.size
        children = np.arange(n)[:, None] * Z + 1 + np.arange(Z)[None, :]  # BFS child index
        children[children >= n] = 0  # past the last level: back to the root
        fscs.append(FSC(tree.actions, children, 0).minimized())
    return fscs


def trajectory_init(
    model: DecPOMDP, max_nodes: int = 50, on_surprise: str = "advance"
) -> list[FSC]:
    """Every agent plays its part of the centralised plan along the most likely trajectory.

    From b0 the centralised QMDP-greedy joint action ``a_t = argmax_a b_t·Q_MDP(·, a)`` is
    played, the most likely joint observation ``o_t`` is assumed, and ``b_{t+1}`` is the full
    joint-observation Bayes update; this stops when ``b_{t+1}`` repeats an earlier belief (the
    plan loops back to that step) or after ``max_nodes`` steps (it loops back to step 0). Agent
    i's controller has one node per step t playing its component of ``a_t``; on its expected
    observation (its component of ``o_t``) it moves to the next step. On any other observation
    it also moves on (``on_surprise="advance"``, the default: the plan is played open-loop, so
    the agents stay in step with each other) or stays to retry the step (``"stay"``). Nodes are
    then minimised; JESP's best responses add the reactions to observations.

    On Mars rovers (γ = 0.9) the open-loop plan is worth 14.12 (``"stay"``: 5.21, a failed move
    desynchronises the rovers) and JESP from it reaches a better equilibrium than from the MA
    init (≈ 25.4 vs ≈ 22.0 in our runs).

    Args:
        model: The Dec-POMDP.
        max_nodes: Most plan steps (nodes per agent before minimisation).
        on_surprise: ``"advance"`` or ``"stay"``.

    Returns:
        One FSC per agent.

    Raises:
        InfJespError: On an unknown ``on_surprise``.
    """
    if on_surprise not in _ON_SURPRISE:
        raise InfJespError(
            f"on_surprise must be one of {', '.join(map(repr, _ON_SURPRISE))}, got {on_surprise!r}"
        )
    max_nodes = _check_max_nodes(max_nodes)
    T = np.asarray(model.T, dtype=float)  # (JA, S, S')
    O = np.asarray(model.O, dtype=float)  # noqa: E741  (JA, S', JO)
    Q = mdp_q_values(model)  # (S, JA)
    table = model.joint_action_table()  # (JA, N)
    robust_ties = on_surprise == "resync"
    belief = np.asarray(model.b0, dtype=float)
    beliefs = [belief]
    plan: list[tuple[int, int, int]] = []  # (joint action, joint observation, next step)
    while True:
        ja = _robust_argmax(belief @ Q, table) if robust_ties else int(np.argmax(belief @ Q))
        joint_SJ = (belief @ T[ja])[:, None] * O[ja]  # (S', JO)
        jo = int(np.argmax(joint_SJ.sum(axis=0)))
        following = joint_SJ[:, jo] / joint_SJ[:, jo].sum()
        gaps = np.abs(np.array(beliefs) - following).sum(axis=1)
        repeat = int(np.argmin(gaps))
        if gaps[repeat] < 1e-9 or len(beliefs) >= max_nodes:
            plan.append((ja, jo, repeat if gaps[repeat] < 1e-9 else 0))
            break
        plan.append((ja, jo, len(beliefs)))
        beliefs.append(following)
        belief = following
    actions_T = model.joint_action_table()[[ja for ja, _, _ in plan]]  # (steps, N)
    expected_T = model.joint_observation_table()[[jo for _, jo, _ in plan]]  # (steps, N)
    following_T = np.array([nxt for _, _, nxt in plan], dtype=np.int64)
    steps = np.arange(len(plan))
    fscs = []
    for i in range(model.num_agents):
        Z = model.num_observations[i]
        expected = np.arange(Z)[None, :] == expected_T[:, i][:, None]
        if on_surprise == "advance":
            expected[:] = True
        transitions = np.where(expected, following_T[:, None], steps[:, None])
        if on_surprise == "resync":
            transitions = _resync_transitions(transitions, expected_T[:, i], following_T, Z)
        fscs.append(FSC(actions_T[:, i].copy(), transitions, 0).minimized())
    return fscs


def _robust_argmax(q: np.ndarray, table: np.ndarray) -> int:
    """``argmax q`` over joint actions, ties broken toward robust components.

    Among the joint actions within ``1e-9·max(1, |max q|)`` of the best, pick the one whose
    components do best on average against every choice of the other agents (the sum over
    agents i of the mean of ``q`` over the joint actions that share a_i); then the lowest index.
    On Mars both "sample" and "drill" at a sample site are centrally optimal when the other
    rover samples too, but only "sample" is safe when it does not.
    """
    best = float(q.max())
    tied = np.flatnonzero(q >= best - 1e-9 * max(1.0, abs(best)))
    if tied.size == 1:
        return int(tied[0])
    score = np.zeros(tied.size)
    for i in range(table.shape[1]):
        component = table[:, i]
        means = np.bincount(component, weights=q) / np.bincount(component)
        score += means[component[tied]]
    return int(tied[int(np.argmax(score))])


def _resync_transitions(
    transitions: np.ndarray, expected: np.ndarray, following: np.ndarray, num_observations: int
) -> np.ndarray:
    """``on_surprise="resync"``: redirect every unexpected observation of a plan step.

    Step u is *entered* on observation z when some step t expects z and moves to u
    (``following[t] == u``). On an unexpected z, step t stays when z enters t itself (the step
    did not take effect, e.g. a failed move: retry it), else it moves to the first step at or
    after t, cyclically, that z enters (e.g. the observation that starts the plan over), else
    it stays.
    """
    steps = transitions.shape[0]
    enters = np.zeros((steps, num_observations), dtype=bool)  # enters[u, z]
    enters[following, expected] = True
    result = transitions.copy()
    for t in range(steps):
        for z in range(num_observations):
            if z == expected[t]:
                continue
            order = (t + np.arange(steps)) % steps  # t first, then forward, wrapping around
            hits = order[enters[order, z]]
            result[t, z] = int(hits[0]) if hits.size else t
    return result


def build_init(name: str, model: DecPOMDP, max_nodes: int, rng: np.random.Generator) -> list[FSC]:
    """The init ``name`` (one of :data:`INITS`) for ``model``.

    Raises:
        InfJespError: For an unknown name.
    """
    if name == "random":
        return random_init(model, max_nodes, rng)
    if name == "blind":
        return blind_init(model)
    if name == "mdp":
        return mdp_init(model, max_nodes)
    if name == "ma":
        return ma_init(model, max_nodes, rng)
    if name == "md":
        return md_init(model, max_nodes, rng)
    if name == "ms":
        return ms_init(model, max_nodes, rng)
    if name == "periodic":
        return periodic_init(model, max_nodes)
    if name == "reactive":
        return reactive_init(model, max_nodes)
    if name == "trajectory":
        return trajectory_init(model, max_nodes)
    if name == "resync":
        return trajectory_init(model, max_nodes, on_surprise="resync")
    raise InfJespError(f"unknown init {name!r}; expected one of {', '.join(sorted(INITS))}")
