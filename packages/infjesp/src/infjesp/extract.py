"""From α-vectors to an FSC (policy-graph extraction, design doc §2.4), and the best-response call.

Extraction: node 0 holds ``argmax_α α·b0``; a BFS over (α, belief) nodes follows, for each own
observation z with ``P(z | b, a) > 0``, the successor belief ``b' = τ(b, a, z)`` to the α that is
maximal there, reusing that α's node or creating one (its representative belief is b'). Past
``max_nodes`` (or within ``belief_merge_gap`` in L1 of an existing node's belief) a successor
links to the node whose representative belief is closest in L1. Unreachable observations link
back to the node itself; unreachable nodes are pruned.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from infjesp.bestresponse import BestResponsePOMDP, build_best_response
from infjesp.fsc import FSC, evaluate_joint_at, evaluate_value
from infjesp.model import DecPOMDP
from infjesp.pbvi import AlphaVectors, SolveResult, solve

# Most policy-graph nodes policy_graph_fsc walks before giving up (before minimisation).
_GRAPH_NODE_LIMIT = 5_000
# best_response(time_limit=L) gives the point-based solver L minus this reserve for the first
# extraction and its exact evaluation: min(fraction · L, cap) seconds.
EXTRACTION_RESERVE_FRACTION = 0.1
EXTRACTION_RESERVE_MAX_S = 10.0

__all__ = ["BestResponseResult", "best_response", "extract_fsc"]


def extract_fsc(
    br: BestResponsePOMDP,
    alphas: AlphaVectors,
    *,
    max_nodes: int = 50,
    belief_merge_gap: float | None = None,
    link: str = "belief",
) -> FSC:
    """Turn the α-vector policy of ``br`` into a deterministic FSC of agent ``br.agent``.

    Args:
        br: The best-response POMDP.
        alphas: Its α-vectors (e.g. ``solve(br).alphas``).
        max_nodes: Hard cap on the number of nodes (>= 1).
        belief_merge_gap: When given, a successor whose belief lies within this L1 distance of an
            existing node's representative belief links to that node instead of creating one.
        link: Where a successor goes once the cap is reached: ``"belief"`` (MC-JESP) links to
            the node whose representative belief is closest in L1; ``"value"`` links to the
            node whose α-vector is best at the successor belief.

    Returns:
        The FSC over agent i's actions and observations, start node 0, unreachable nodes removed.

    Raises:
        ValueError: On ``max_nodes < 1``, a negative merge gap, an unknown ``link`` or an empty
            α set.
    """
    if link not in ("belief", "value"):
        raise ValueError(f"link must be 'belief' or 'value', got {link!r}")
    if isinstance(max_nodes, bool) or int(max_nodes) < 1:
        raise ValueError(f"max_nodes must be >= 1, got {max_nodes!r}")
    if belief_merge_gap is not None and belief_merge_gap < 0:
        raise ValueError(f"belief_merge_gap must be >= 0, got {belief_merge_gap!r}")
    if len(alphas) == 0:
        raise ValueError("alphas is empty")
    Z = br.num_observations
    b0 = np.asarray(br.b0, dtype=float)
    node_alpha = [alphas.best(b0)]
    node_belief = [b0]
    alpha_node = {node_alpha[0]: 0}
    transitions: list[list[int]] = [[0] * Z]
    queue = deque([0])
    while queue:
        n = queue.popleft()
        b = node_belief[n]
        a = int(alphas.actions[node_alpha[n]])
        for z in range(Z):
            p, b_next = br.successor(b, a, z)
            if p <= 0:
                transitions[n][z] = n
                continue
            k = alphas.best(b_next)
            if k in alpha_node:
                transitions[n][z] = alpha_node[k]
                continue
            distances = np.abs(np.array(node_belief) - b_next).sum(axis=1)
            closest = int(np.argmin(distances))
            if belief_merge_gap is not None and distances[closest] <= belief_merge_gap:
                transitions[n][z] = closest
                continue
            if len(node_alpha) >= max_nodes:
                if link == "value":
                    closest = int(np.argmax(alphas.alphas[node_alpha] @ b_next))
                transitions[n][z] = closest
                continue
            m = len(node_alpha)
            node_alpha.append(k)
            node_belief.append(b_next)
            alpha_node[k] = m
            transitions.append([m] * Z)
            transitions[n][z] = m
            queue.append(m)
    actions = np.asarray(alphas.actions)[node_alpha]
    return FSC(actions, np.array(transitions, dtype=np.int64), 0).reachable()


@dataclass(frozen=True, eq=False)
class BestResponseResult:
    """Outcome of :func:`best_response`.

    Attributes:
        fsc: The extracted FSC of the agent.
        value: Exact joint value of ``fsc`` with the other agents' FSCs (via ``evaluate_joint``).
        bound: The solver's lower bound at b0 (α-value).
        upper: The solver's upper bound at b0.
        br_states: Number of reachable extended states.
        seconds: Wall time of build + solve + extraction + evaluation.
    """

    fsc: FSC
    value: float
    bound: float
    upper: float
    br_states: int
    seconds: float


def controller_alphas(
    br: BestResponsePOMDP, fsc: FSC, joint_values: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact node values of agent ``br.agent``'s FSC as α-vectors of ``br``.

    Node n's α-vector at extended state (s, k, z) is the joint value of (n, the others' nodes k)
    in state s — the last own observation z does not enter. With the FSC's actions and
    transitions as links, these are policy-graph nodes whose α-vectors are exact values.

    Args:
        br: The best-response POMDP of ``br.agent`` against the other agents' FSCs.
        fsc: Agent ``br.agent``'s FSC.
        joint_values: ``evaluate_joint(model, fscs).V``, shape ``(N_1, …, N_N, S)``.

    Returns:
        ``(alphas (N_i, E), actions (N_i,), links (N_i, Z))`` for :func:`infjesp.pbvi.solve`.
    """
    values = np.moveaxis(joint_values, br.agent, 0)  # (N_i, others..., S)
    values = values.reshape(values.shape[0], -1, values.shape[-1])  # (N_i, K, S)
    s, k = br.state_index[:, 0], br.state_index[:, 1]
    return values[:, k, s], fsc.actions, fsc.transitions


def controller_rows(br: BestResponsePOMDP, fsc: FSC, num_states: int) -> np.ndarray:
    """``(N_i, E)`` flat joint indices ``k·S + s`` of (own node n, the BR state's (s, k_-i)).

    ``evaluate_joint_at(model, fscs, rows.ravel())`` then gives :func:`controller_alphas`
    without solving the whole joint system.
    """
    s, k = br.state_index[:, 0], br.state_index[:, 1]
    shape = (fsc.num_nodes, s.size)
    other_digits = iter(np.unravel_index(k, br.other_sizes) if br.other_sizes else ())
    other_sizes = iter(br.other_sizes)
    digits: list[np.ndarray] = []
    sizes: list[int] = []
    for j in range(len(br.other_sizes) + 1):
        if j == br.agent:
            digits.append(np.broadcast_to(np.arange(fsc.num_nodes)[:, None], shape))
            sizes.append(fsc.num_nodes)
        else:
            digits.append(np.broadcast_to(next(other_digits)[None, :], shape))
            sizes.append(next(other_sizes))
    joint = np.ravel_multi_index(tuple(digits), tuple(sizes))
    return joint * num_states + s[None, :]


def seeded_alphas(
    model: DecPOMDP, br: BestResponsePOMDP, fscs: Sequence[FSC]
) -> tuple[float, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The current joint value and :func:`controller_alphas`, from the reachable part only."""
    fsc = fscs[br.agent]
    rows = controller_rows(br, fsc, model.num_states)
    value, values = evaluate_joint_at(model, fscs, rows.ravel())
    return value, (values.reshape(rows.shape), fsc.actions, fsc.transitions)


def policy_graph_fsc(br: BestResponsePOMDP, result: SolveResult, max_nodes: int) -> FSC | None:
    """The FSC that follows the solver's policy graph from the best α-vector at b0.

    Lossless (see :class:`infjesp.pbvi.PolicyGraph`): its value at b0 is at least
    ``result.lower``. Returns None when the solver kept no graph or the minimised controller
    has more than ``max_nodes`` nodes.
    """
    graph = result.graph
    if graph is None or len(result.alphas) == 0:
        return None
    start = int(graph.ids[result.alphas.best(np.asarray(br.b0, dtype=float))])
    nodes = graph.reachable_from(start, limit=_GRAPH_NODE_LIMIT)
    if nodes is None:
        return None
    index = np.full(graph.actions.size, -1, dtype=np.int64)
    index[nodes] = np.arange(nodes.size)
    fsc = FSC(graph.actions[nodes], index[graph.links[nodes]], 0).minimized()
    return fsc if fsc.num_nodes <= max_nodes else None


def hybrid_fsc(
    br: BestResponsePOMDP, result: SolveResult, graph_nodes: int, max_nodes: int
) -> FSC | None:
    """A bounded policy-graph extraction: the graph near b0, greedy α-vector nodes beyond it.

    The solver's policy graph (:class:`infjesp.pbvi.PolicyGraph`) is followed from the best
    α-vector at b0 breadth-first, tracking the belief on the first path to each node, until
    ``graph_nodes`` nodes are kept. Links that leave the kept part go to the node of the α-vector
    that is best at the successor belief — nodes made as in :func:`extract_fsc` (``link="value"``
    once ``max_nodes`` is reached). Near b0 the controller is the lossless graph; past the cut
    its loss is discounted by γ^depth. Its exact value is what decides (see
    :func:`best_response`).

    Returns:
        The minimised FSC, or None without a graph or when ``graph_nodes`` is not in
        ``[1, max_nodes)``.
    """
    graph = result.graph
    if graph is None or len(result.alphas) == 0 or not 1 <= graph_nodes < max_nodes:
        return None
    alphas = result.alphas
    Z = br.num_observations
    b0 = np.asarray(br.b0, dtype=float)
    order = [int(graph.ids[alphas.best(b0)])]
    belief = {order[0]: b0}
    for g in order:  # the list grows while it is walked: breadth-first
        for z in range(Z):
            successor = int(graph.links[g, z])
            if successor in belief or len(order) >= graph_nodes:
                continue
            p, b_next = br.successor(belief[g], int(graph.actions[g]), z)
            if p > 0:
                belief[successor] = b_next
                order.append(successor)
    index = {g: i for i, g in enumerate(order)}
    actions: list[int] = [int(graph.actions[g]) for g in order]
    transitions: list[list[int]] = [[i] * Z for i in range(len(order))]
    node_alpha: dict[int, int] = {}  # greedy node -> α row
    alpha_node: dict[int, int] = {}  # α row -> greedy node
    queue: deque[tuple[int, np.ndarray]] = deque()

    def target(b_next: np.ndarray) -> int:
        k = alphas.best(b_next)
        if k in alpha_node:
            return alpha_node[k]
        if len(actions) < max_nodes:
            node = len(actions)
            actions.append(int(alphas.actions[k]))
            transitions.append([node] * Z)
            node_alpha[node], alpha_node[k] = k, node
            queue.append((node, b_next))
            return node
        greedy = list(node_alpha)
        values = alphas.alphas[[node_alpha[n] for n in greedy]] @ b_next
        return greedy[int(np.argmax(values))]

    for i, g in enumerate(order):
        for z in range(Z):
            successor = int(graph.links[g, z])
            if successor in index:
                transitions[i][z] = index[successor]
                continue
            p, b_next = br.successor(belief[g], actions[i], z)
            if p > 0:
                transitions[i][z] = target(b_next)
    while queue:
        node, b = queue.popleft()
        for z in range(Z):
            p, b_next = br.successor(b, actions[node], z)
            if p > 0:
                transitions[node][z] = target(b_next)
    fsc = FSC(np.array(actions, dtype=np.int64), np.array(transitions, dtype=np.int64), 0)
    return fsc.reachable().minimized()


def best_response(
    model: DecPOMDP,
    fscs: Sequence[FSC],
    agent: int,
    *,
    max_nodes: int = 100,
    epsilon: float = 1e-4,
    max_beliefs: int = 2000,
    time_limit: float | None = None,
    rng: np.random.Generator | int | None = None,
    belief_merge_gap: float | None = None,
) -> BestResponseResult:
    """Best response of ``agent`` to the other agents' FSCs: build, solve, extract, evaluate.

    A second extraction that links by α-value past the cap (``link="value"``) is evaluated
    too (the check whether the cap was hit cannot use the minimised size), the lossless policy
    graph when it fits ``max_nodes``, else the bounded graph extractions (:func:`hybrid_fsc`)
    when the greedy ones lost value; the best one by exact value is returned.

    Args:
        model: The Dec-POMDP (discount < 1).
        fscs: One FSC per agent; ``fscs[agent]`` is only replaced in the evaluation.
        agent: The optimising agent.
        max_nodes: Node cap of the extracted FSC.
        epsilon: Solver target gap at b0.
        max_beliefs: Solver belief budget.
        time_limit: Wall-clock budget in seconds for the whole call. The solver gets it minus
            a reserve for extraction (``min(EXTRACTION_RESERVE_FRACTION · time_limit,
            EXTRACTION_RESERVE_MAX_S)``); the first (greedy) extraction and its exact
            evaluation always run, the alternative extractions only while time is left. The
            call can still overrun by the solver's last backup sweep and that first extraction.
        rng: Passed to the solver (which is deterministic).
        belief_merge_gap: See :func:`extract_fsc`.

    Returns:
        The new FSC, its exact joint value and the solver's bounds.

    Raises:
        InfJespError: When the discount is >= 1.
    """
    started = time.perf_counter()
    deadline = math.inf if time_limit is None else started + max(0.0, float(time_limit))

    def time_left() -> bool:
        return time.perf_counter() < deadline

    br = build_best_response(model, fscs, agent)
    _, initial = seeded_alphas(model, br, fscs)
    solver_limit = None
    if time_limit is not None:
        limit = max(0.0, float(time_limit))
        reserve = min(EXTRACTION_RESERVE_FRACTION * limit, EXTRACTION_RESERVE_MAX_S)
        solver_limit = max(0.0, deadline - reserve - time.perf_counter())
    result = solve(
        br,
        epsilon=epsilon,
        max_beliefs=max_beliefs,
        time_limit=solver_limit,
        rng=rng,
        initial=initial,
    )
    joint = list(fscs)
    # minimized(): behaviourally equal nodes merged (same value), so the next best responses,
    # whose state space grows with this controller's size, stay small
    fsc = extract_fsc(
        br, result.alphas, max_nodes=max_nodes, belief_merge_gap=belief_merge_gap
    ).minimized()
    joint[agent] = fsc
    value = evaluate_value(model, joint)
    if len(result.alphas) > 1 and time_left():  # also link by α-value past the cap, keep the best
        alt = extract_fsc(
            br, result.alphas, max_nodes=max_nodes, belief_merge_gap=belief_merge_gap, link="value"
        ).minimized()
        joint[agent] = alt
        alt_value = evaluate_value(model, joint)
        if alt_value > value:
            fsc, value = alt, alt_value
    graph_fsc = policy_graph_fsc(br, result, max_nodes) if time_left() else None
    if graph_fsc is not None:  # lossless: worth at least the lower bound at b0
        joint[agent] = graph_fsc
        graph_value = evaluate_value(model, joint)
        if graph_value > value:
            fsc, value = graph_fsc, graph_value
    elif time_left() and value < result.lower - 1e-9 * max(1.0, abs(result.lower)):
        # The whole graph does not fit and the greedy extraction lost value: keep the graph
        # near b0 (lossless there) and go greedy past a cut; the exact values decide.
        for graph_nodes in sorted({max_nodes // 2, (3 * max_nodes) // 4, max_nodes - 1}):
            if not time_left():
                break
            hybrid = hybrid_fsc(br, result, graph_nodes, max_nodes)
            if hybrid is None:
                continue
            joint[agent] = hybrid
            hybrid_value = evaluate_value(model, joint)
            if hybrid_value > value:
                fsc, value = hybrid, hybrid_value
    return BestResponseResult(
        fsc=fsc,
        value=float(value),
        bound=result.lower,
        upper=result.upper,
        br_states=br.num_states,
        seconds=time.perf_counter() - started,
    )
