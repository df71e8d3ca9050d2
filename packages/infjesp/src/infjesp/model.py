"""The flat Dec-POMDP model and its simple bounds.

Shape legend:
    N   agents
    S   states (S' the next state)
    JA  joint actions, mixed radix over the agents' action sets, LAST agent fastest (MADP order)
    JO  joint observations, same convention

``DecPOMDP`` holds dense float64 arrays ``T (JA, S, S')``, ``O (JA, S', JO)``, ``R (S, JA)`` and
``b0 (S,)``. The arrays are read-only copies: build a new model (``dataclasses.replace``) to change
one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from infjesp.errors import InfJespError, ModelValidationError

__all__ = [
    "DecPOMDP",
    "best_constant_joint_action",
    "mdp_q_values",
    "mdp_value",
    "qmdp_value",
]


def _mixed_radix_index(digits: Sequence[int], radices: tuple[int, ...], what: str) -> int:
    """Joint index of per-agent indices, last agent fastest."""
    if len(digits) != len(radices):
        raise ValueError(
            f"expected {len(radices)} {what} indices (one per agent), got {len(digits)}"
        )
    index = 0
    for agent, (digit, radix) in enumerate(zip(digits, radices, strict=True)):
        digit = int(digit)
        if not 0 <= digit < radix:
            raise ValueError(f"{what} index {digit} of agent {agent} is out of range [0, {radix})")
        index = index * radix + digit
    return index


def _mixed_radix_digits(index: int, radices: tuple[int, ...], what: str) -> tuple[int, ...]:
    """Per-agent indices of a joint index, last agent fastest."""
    total = math.prod(radices)
    index = int(index)
    if not 0 <= index < total:
        raise ValueError(f"joint {what} index {index} is out of range [0, {total})")
    digits = []
    for radix in reversed(radices):
        index, digit = divmod(index, radix)
        digits.append(digit)
    return tuple(reversed(digits))


def _mixed_radix_table(radices: tuple[int, ...]) -> np.ndarray:
    """(prod(radices), N) int64 table whose row k is the per-agent decomposition of k."""
    total = math.prod(radices)
    return np.stack(np.unravel_index(np.arange(total), radices), axis=1).astype(np.int64)


def _frozen_array(value: object, name: str) -> np.ndarray:
    try:
        array = np.array(value, dtype=np.float64, copy=True)
    except (TypeError, ValueError) as exc:
        raise ModelValidationError(f"{name} is not a numeric array: {exc}") from None
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class DecPOMDP:
    """A flat, dense Dec-POMDP ⟨I, S, {A_i}, {Z_i}, T, O, R, γ, b0⟩.

    Attributes:
        agent_names: One name per agent (``"0"``, ``"1"``, ... when the file gives a count).
        state_names: One name per state.
        action_names: Per agent, the names of its actions.
        observation_names: Per agent, the names of its observations.
        T: (JA, S, S') with ``T[ja, s, s'] = P(s' | s, ja)``.
        O: (JA, S', JO) with ``O[ja, s', jo] = P(jo | ja, s')``.
        R: (S, JA) expected immediate reward ``R(s, ja)`` (already reduced over s' and jo when the
            file's reward depends on them).
        b0: (S,) initial state distribution.
        discount: The discount factor γ in [0, 1].
        name: A label for messages, e.g. the file stem.

    Raises:
        ModelValidationError: When names and array shapes disagree. Probabilities are checked by
            :meth:`validate`, not here.
    """

    agent_names: tuple[str, ...]
    state_names: tuple[str, ...]
    action_names: tuple[tuple[str, ...], ...]
    observation_names: tuple[tuple[str, ...], ...]
    T: np.ndarray
    O: np.ndarray  # noqa: E741 - the standard symbol of the observation model
    R: np.ndarray
    b0: np.ndarray
    discount: float
    name: str = ""

    def __post_init__(self) -> None:
        set_field = object.__setattr__
        set_field(self, "agent_names", tuple(str(a) for a in self.agent_names))
        set_field(self, "state_names", tuple(str(s) for s in self.state_names))
        set_field(self, "action_names", tuple(tuple(map(str, a)) for a in self.action_names))
        set_field(
            self, "observation_names", tuple(tuple(map(str, z)) for z in self.observation_names)
        )
        num_agents = len(self.agent_names)
        if num_agents < 1:
            raise ModelValidationError("a Dec-POMDP needs at least one agent")
        if len(self.action_names) != num_agents or len(self.observation_names) != num_agents:
            raise ModelValidationError(
                f"{num_agents} agents but {len(self.action_names)} action lists and "
                f"{len(self.observation_names)} observation lists"
            )
        if len(self.state_names) < 1 or any(
            len(n) < 1 for n in (*self.action_names, *self.observation_names)
        ):
            raise ModelValidationError("every state, action and observation set must be non-empty")
        for field in ("T", "O", "R", "b0"):
            set_field(self, field, _frozen_array(getattr(self, field), field))
        try:
            discount = float(self.discount)
        except (TypeError, ValueError):
            raise ModelValidationError(f"discount {self.discount!r} is not a number") from None
        if not 0.0 <= discount <= 1.0:
            raise ModelValidationError(f"discount {discount} is outside [0, 1]")
        set_field(self, "discount", discount)
        set_field(self, "name", str(self.name))
        num_s, num_ja, num_jo = (
            self.num_states,
            self.num_joint_actions,
            self.num_joint_observations,
        )
        expected = {
            "T": (num_ja, num_s, num_s),
            "O": (num_ja, num_s, num_jo),
            "R": (num_s, num_ja),
            "b0": (num_s,),
        }
        for field, shape in expected.items():
            actual = getattr(self, field).shape
            if actual != shape:
                raise ModelValidationError(
                    f"{field} has shape {actual}, expected {shape} from the names "
                    f"(JA={num_ja}, S={num_s}, JO={num_jo})"
                )

    # ------------------------------------------------------------------ sizes
    @property
    def num_agents(self) -> int:
        """Number of agents N."""
        return len(self.agent_names)

    @property
    def num_states(self) -> int:
        """Number of states |S|."""
        return len(self.state_names)

    @property
    def num_actions(self) -> tuple[int, ...]:
        """|A_i| per agent."""
        return tuple(len(a) for a in self.action_names)

    @property
    def num_observations(self) -> tuple[int, ...]:
        """|Z_i| per agent."""
        return tuple(len(z) for z in self.observation_names)

    @property
    def num_joint_actions(self) -> int:
        """JA = Π_i |A_i|."""
        return math.prod(self.num_actions)

    @property
    def num_joint_observations(self) -> int:
        """JO = Π_i |Z_i|."""
        return math.prod(self.num_observations)

    # ------------------------------------------------------- joint indexing
    def joint_action_index(self, actions: Sequence[int]) -> int:
        """Joint action index of per-agent action indices (mixed radix, last agent fastest)."""
        return _mixed_radix_index(actions, self.num_actions, "action")

    def joint_action(self, index: int) -> tuple[int, ...]:
        """Per-agent action indices of a joint action index."""
        return _mixed_radix_digits(index, self.num_actions, "action")

    def joint_observation_index(self, observations: Sequence[int]) -> int:
        """Joint observation index of per-agent observation indices (last agent fastest)."""
        return _mixed_radix_index(observations, self.num_observations, "observation")

    def joint_observation(self, index: int) -> tuple[int, ...]:
        """Per-agent observation indices of a joint observation index."""
        return _mixed_radix_digits(index, self.num_observations, "observation")

    def joint_action_table(self) -> np.ndarray:
        """(JA, N) int64: row ``ja`` holds the per-agent action indices of ``ja``."""
        return _mixed_radix_table(self.num_actions)

    def joint_observation_table(self) -> np.ndarray:
        """(JO, N) int64: row ``jo`` holds the per-agent observation indices of ``jo``."""
        return _mixed_radix_table(self.num_observations)

    def joint_action_label(self, index: int) -> str:
        """Human-readable joint action, e.g. ``"(listen, listen)"``."""
        parts = self.joint_action(index)
        return "(" + ", ".join(self.action_names[i][a] for i, a in enumerate(parts)) + ")"

    def joint_observation_label(self, index: int) -> str:
        """Human-readable joint observation, e.g. ``"(hear-left, hear-right)"``."""
        parts = self.joint_observation(index)
        return "(" + ", ".join(self.observation_names[i][z] for i, z in enumerate(parts)) + ")"

    # -------------------------------------------------------------- variants
    def with_discount(self, gamma: float) -> DecPOMDP:
        """A copy with another discount factor (the CLI's ``--discount``).

        Raises:
            ModelValidationError: When ``gamma`` is not in [0, 1].
        """
        return dataclasses.replace(self, discount=gamma)

    # ------------------------------------------------------------ validation
    def validate(self, tolerance: float = 1e-6) -> None:
        """Check that T, O and b0 are finite, non-negative and that their rows sum to 1.

        Args:
            tolerance: Allowed absolute deviation of a row sum from 1.

        Raises:
            ModelValidationError: Naming the first bad row and its sum.
        """
        label = self.name or "model"
        for field in ("T", "O", "R", "b0"):
            array = getattr(self, field)
            if not np.all(np.isfinite(array)):
                position = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
                raise ModelValidationError(f"{label}: {field} has a non-finite entry at {position}")
        suffix = f"expected 1 (tolerance {tolerance:g})".replace("e-0", "e-")
        for field, what in (("T", "state"), ("O", "next state")):
            array = getattr(self, field)
            negative = np.argwhere(array < 0)
            if negative.size:
                ja, s, k = (int(i) for i in negative[0])
                raise ModelValidationError(
                    f"{label}: {field} row for joint action {self.joint_action_label(ja)}, {what} "
                    f"{self.state_names[s]} has a negative entry {array[ja, s, k]:g} at column {k}"
                )
            sums = array.sum(axis=2)  # (JA, S)
            bad = np.argwhere(np.abs(sums - 1.0) > tolerance)
            if bad.size:
                ja, s = (int(i) for i in bad[0])
                raise ModelValidationError(
                    f"{label}: {field} row for joint action {self.joint_action_label(ja)}, {what} "
                    f"{self.state_names[s]} sums to {sums[ja, s]:.10g}, {suffix}"
                )
        if np.any(self.b0 < 0):
            raise ModelValidationError(f"{label}: start distribution b0 has a negative entry")
        total = float(self.b0.sum())
        if abs(total - 1.0) > tolerance:
            raise ModelValidationError(
                f"{label}: start distribution b0 sums to {total:.10g}, {suffix}"
            )

    def require_infinite_horizon(self) -> None:
        """Refuse a discount that makes an infinite-horizon solve diverge.

        Raises:
            InfJespError: When ``discount >= 1``.
        """
        if self.discount >= 1.0:
            raise InfJespError(
                f"{self.name or 'model'} has discount {self.discount}: an infinite-horizon solve "
                "needs 0 <= gamma < 1; pass --discount 0.9"
            )


# ---------------------------------------------------------------------- bounds
def mdp_q_values(model: DecPOMDP, tol: float = 1e-10) -> np.ndarray:
    """Optimal Q-values of the underlying (fully observable, centralised) MDP.

    ``Q(s, ja) = R(s, ja) + γ Σ_s' T(s'|s, ja) max_ja' Q(s', ja')``, solved by policy iteration
    (exact policy evaluation with a linear solve, then greedy improvement; a handful of
    iterations instead of hundreds of value-iteration sweeps). The result equals value iteration
    run to convergence.

    Args:
        model: The Dec-POMDP; its discount must be < 1.
        tol: A joint action replaces the current one only if it improves Q by more than ``tol``
            (prevents cycling between ties).

    Returns:
        (S, JA) array Q*.

    Raises:
        InfJespError: When the discount is >= 1.
    """
    model.require_infinite_horizon()
    gamma = model.discount
    num_ja, num_s = model.num_joint_actions, model.num_states
    R_SA = model.R
    T_flat = model.T.reshape(num_ja * num_s, num_s)  # (JA·S, S'): one matrix-vector product
    states = np.arange(num_s)
    identity = np.eye(num_s)

    def backup(V_S: np.ndarray) -> np.ndarray:
        return R_SA + gamma * (T_flat @ V_S).reshape(num_ja, num_s).T  # (S, JA)

    policy_S = R_SA.argmax(axis=1)
    for _ in range(10_000):
        T_pi_SS = model.T[policy_S, states]  # (S, S') rows of the chosen joint actions
        V_S = np.linalg.solve(identity - gamma * T_pi_SS, R_SA[states, policy_S])
        Q_SA = backup(V_S)
        improved = Q_SA.max(axis=1) > Q_SA[states, policy_S] + tol
        if not improved.any():
            return Q_SA
        policy_S = np.where(improved, Q_SA.argmax(axis=1), policy_S)
    raise InfJespError("policy iteration on the underlying MDP did not converge")  # unreachable


def mdp_value(model: DecPOMDP, tol: float = 1e-10) -> float:
    """V_MDP(b0) = Σ_s b0(s) max_ja Q*(s, ja), an upper bound on any joint policy's value."""
    return float(model.b0 @ mdp_q_values(model, tol).max(axis=1))


def qmdp_value(model: DecPOMDP, tol: float = 1e-10) -> float:
    """QMDP upper bound at b0: max_ja Σ_s b0(s) Q*(s, ja) (≤ V_MDP(b0))."""
    return float((model.b0 @ mdp_q_values(model, tol)).max())


def best_constant_joint_action(model: DecPOMDP) -> tuple[float, tuple[int, ...]]:
    """Exact value at b0 of the best "always do the same joint action" policy (a lower bound).

    For every joint action, ``V = (I − γ T_ja)^{-1} R[:, ja]`` and the value is ``b0 · V``.

    Returns:
        ``(value, joint_action)`` where ``joint_action`` holds per-agent action indices (the first
        maximiser in joint-index order).

    Raises:
        InfJespError: When the discount is >= 1.
    """
    model.require_infinite_horizon()
    num_s = model.num_states
    system_ASS = np.eye(num_s)[None] - model.discount * model.T  # (JA, S, S)
    values_AS = np.linalg.solve(system_ASS, model.R.T[:, :, None])[:, :, 0]  # (JA, S)
    values_A = values_AS @ model.b0
    best = int(np.argmax(values_A))
    return float(values_A[best]), model.joint_action(best)
