"""The .dpomdp reader and writer: shared files, every grammar construct, errors, round trips."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infjesp.errors import DpomdpParseError, InfJespError, ModelValidationError
from infjesp.io import format_dpomdp, parse_dpomdp, read_dpomdp, write_dpomdp
from infjesp.model import DecPOMDP


def shared_data_dir() -> Path:
    """``../shared/data/dpomdp`` next to the repository root, or ``$INFJESP_SHARED_DATA``."""
    override = os.environ.get("INFJESP_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3].parent / "shared" / "data" / "dpomdp"


DATA = shared_data_dir()


def shared_file(name: str) -> Path:
    path = DATA / name
    if not path.is_file():
        pytest.skip(f"shared problem file {path} is absent (set INFJESP_SHARED_DATA)")
    return path


# file: agents, |S|, |A_i|, |Z_i|, discount in the file (the data README's table)
COUNTS = {
    "dectiger.dpomdp": (2, 2, (3, 3), (2, 2), 1.0),
    "dectiger_gamma09_cassandra_order.dpomdp": (2, 2, (3, 3), (2, 2), 0.9),
    "dectiger_skewed.dpomdp": (2, 2, (3, 3), (2, 2), 1.0),
    "recycling.dpomdp": (2, 4, (3, 3), (2, 2), 0.9),
    "GridSmall.dpomdp": (2, 16, (5, 5), (2, 2), 0.9),
    "broadcastChannel.dpomdp": (2, 4, (2, 2), (2, 2), 1.0),
    "Mars.dpomdp": (2, 256, (6, 6), (8, 8), 1.0),
    "fireFighting_2_3_3.dpomdp": (2, 432, (3, 3), (2, 2), 1.0),
    "relay4.dpomdp": (2, 4, (3, 3), (3, 3), 0.95),
    "oneDoor_2_7_0.20_0.00_0_2.dpomdp": (2, 65, (4, 4), (2, 2), 0.95),
    "2generals.dpomdp": (2, 2, (2, 2), (2, 2), 1.0),
    "prisoners.dpomdp": (2, 1, (2, 2), (2, 2), 1.0),
}

_MODELS: dict[str, DecPOMDP] = {}


def load(name: str) -> DecPOMDP:
    """Parse a shared file once per test session (Mars and fireFighting take a fraction of a s)."""
    if name not in _MODELS:
        _MODELS[name] = read_dpomdp(shared_file(name))
    return _MODELS[name]


# ----------------------------------------------------------------------------- shared files
@pytest.mark.parametrize("name", sorted(COUNTS))
def test_shared_file_counts(name: str) -> None:
    agents, states, actions, observations, discount = COUNTS[name]
    model = load(name)
    assert model.num_agents == agents
    assert model.num_states == states
    assert model.num_actions == actions
    assert model.num_observations == observations
    assert model.discount == discount
    assert model.name == Path(name).stem
    model.validate(tolerance=1e-12)


def test_dectiger_variants_give_the_same_model() -> None:
    madp = load("dectiger.dpomdp")
    cassandra = load("dectiger_gamma09_cassandra_order.dpomdp")
    for field in ("T", "O", "R", "b0"):
        np.testing.assert_array_equal(getattr(madp, field), getattr(cassandra, field), field)
    assert (madp.discount, cassandra.discount) == (1.0, 0.9)
    listen = madp.joint_action_index([0, 0])
    np.testing.assert_array_equal(madp.T[listen], np.eye(2))  # identity overrides uniform
    np.testing.assert_array_equal(madp.T[madp.joint_action_index([1, 2])], np.full((2, 2), 0.5))
    assert madp.O[listen, 0, madp.joint_observation_index([0, 0])] == 0.7225
    np.testing.assert_array_equal(madp.R[:, listen], [-2.0, -2.0])
    assert madp.R[1, madp.joint_action_index([1, 1])] == 20.0  # '+20'
    np.testing.assert_array_equal(load("dectiger_skewed.dpomdp").b0, [0.8, 0.2])


def test_gridsmall_reward_is_reduced_over_next_states() -> None:
    model = load("GridSmall.dpomdp")
    up_up = model.joint_action_index([0, 0])
    # R: * : * : s' : * : 1.0 for s' in {0, 5, 10, 15}; from state 0, (up, up) reaches 0 with
    # 0.64, 5 with 0.01 and 10 with 0.01 (the file's T lines), so R(0, (up, up)) = 0.66.
    assert model.R[0, up_up] == pytest.approx(0.66, abs=1e-12)
    expected = model.T[:, :, [0, 5, 10, 15]].sum(axis=2).T  # (S, JA)
    np.testing.assert_allclose(model.R, expected, atol=1e-12)
    np.testing.assert_array_equal(model.b0, np.eye(16)[6])
    assert model.observation_names[0] == ("nnnnnynnn", "nnnynnnnn")


def test_start_forms_in_shared_files() -> None:
    broadcast = load("broadcastChannel.dpomdp")
    np.testing.assert_array_equal(broadcast.b0, [0, 0, 0, 1])  # start: S11
    assert broadcast.state_names == ("S00", "S01", "S10", "S11")
    relay = load("relay4.dpomdp")
    np.testing.assert_array_equal(relay.b0, [0, 0, 0, 1])  # start include: l2_r2
    fire = load("fireFighting_2_3_3.dpomdp")
    starts = [i for i, s in enumerate(fire.state_names) if s.endswith("_start_start")]
    assert len(starts) == 27
    np.testing.assert_allclose(fire.b0[starts], 1 / 27)
    assert fire.b0.sum() == pytest.approx(1.0)
    assert np.count_nonzero(fire.b0) == 27
    recycling = load("recycling.dpomdp")  # counts only
    assert recycling.state_names == ("s0", "s1", "s2", "s3")
    assert recycling.observation_names == (("o0", "o1"), ("o0", "o1"))


def test_example_is_rejected() -> None:
    path = shared_file("example.dpomdp")
    with pytest.raises((DpomdpParseError, ModelValidationError)):
        read_dpomdp(path)
    with pytest.raises(DpomdpParseError, match=r"example\.dpomdp:\d+: .*out of range"):
        read_dpomdp(path, validate=False)


def test_mars_parses_quickly() -> None:
    path = shared_file("Mars.dpomdp")
    start = time.perf_counter()
    read_dpomdp(path)
    assert time.perf_counter() - start < 5.0


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InfJespError, match="cannot read file"):
        read_dpomdp(tmp_path / "nope.dpomdp")


# ----------------------------------------------------------------------------- grammar
HEAD = """\
agents: 2
discount: 0.9
values: reward
states: s0 s1 s2
start: uniform
actions:
a0 a1
b0 b1 b2
observations:
z0 z1
y0 y1
"""


def body(text: str, head: str = HEAD, **kwargs: object) -> DecPOMDP:
    return parse_dpomdp(head + text, "test.dpomdp", validate=False, **kwargs)  # type: ignore[arg-type]


def test_wildcards_and_override_order() -> None:
    model = body(
        "T: * :\nuniform\n"
        "T: a1 * : s0 : * : 0.0\n"  # row s0 of (a1, b0..b2) zeroed
        "T: a1 b2 : s0 : s2 : 1\n"  # then one entry set
        "T: * : * : s1 : 0.25\n"  # a later wildcard wins everywhere
    )
    third = 1 / 3
    assert model.T[model.joint_action_index([0, 0]), 0, 0] == third
    assert model.T[model.joint_action_index([1, 0]), 0, 0] == 0.0
    assert model.T[model.joint_action_index([1, 2]), 0, 2] == 1.0
    np.testing.assert_array_equal(model.T[:, :, 1], 0.25)


def test_names_indices_and_single_joint_index_agree() -> None:
    by_name = body("T: a1 b2 : s1 : s2 : 0.5\nO: a1 b2 : s2 : z1 y0 : 0.5\n")
    by_index = body("T: 1 2 : 1 : 2 : 0.5\nO: 1 2 : 2 : 1 0 : 0.5\n")
    by_joint = body("T: 5 : 1 : 2 : 0.5\nO: 5 : 2 : 2 : 0.5\n")
    mixed = body("T: a1 2 : s1 : 2 : 0.5\nO: 1 b2 : s2 : z1 0 : 0.5\n")
    for other in (by_index, by_joint, mixed):
        np.testing.assert_array_equal(by_name.T, other.T)
        np.testing.assert_array_equal(by_name.O, other.O)
    assert by_name.T[5, 1, 2] == 0.5 and by_name.O[5, 2, 2] == 0.5


def test_row_matrix_uniform_identity_forms() -> None:
    model = body(
        "T: * * :\nidentity\n"
        "T: a0 b1 :\n0.1 0.2 0.7\n0.3 0.3 0.4\n+1 0 0\n"
        "T: a1 b1 : s2 :\n0.5 0.25 0.25\n"
        "T: a1 b2 : s0 :\nuniform\n"
        "O: * :\nuniform\n"
        "O: a0 b0 : s1 :\n0.1 0.2 0.3 0.4\n"
        "O: a0 b1 :\n1 0 0 0\n0 1 0 0\n0 0 0 1\n"
    )
    np.testing.assert_array_equal(model.T[0], np.eye(3))
    np.testing.assert_array_equal(model.T[1], [[0.1, 0.2, 0.7], [0.3, 0.3, 0.4], [1, 0, 0]])
    np.testing.assert_array_equal(model.T[4, 2], [0.5, 0.25, 0.25])
    np.testing.assert_array_equal(model.T[5, 0], [1 / 3] * 3)
    np.testing.assert_array_equal(model.O[2], 0.25)
    np.testing.assert_array_equal(model.O[0, 1], [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(model.O[1, 2], [0, 0, 0, 1])
    model.validate()


def test_reward_depending_on_next_state_and_observation() -> None:
    model = body(
        "T: * :\nuniform\nO: * :\nuniform\n"
        "R: * : * : * : * : 1\n"
        "R: a0 b0 : s0 : s1 : * : 4\n"  # s'-dependent: (1 + 4 + 1) / 3 = 2
        "R: a0 b1 : s0 : s2 :\n4 0 0 0\n"  # jo-row: (1 + 1 + 1) / 3 = 1
        "R: a0 b2 : s1 :\n0 0 0 0\n0 0 0 0\n12 0 0 0\n"  # matrix: (0 + 0 + 3) / 3 = 1
        "R: a1 b0 : s0 : s1 : * : 7\n"
        "R: a1 b0 : * : * : * : 5\n"  # a later full wildcard overrides the s'-specific one
        "R: a1 b1 : s0 : * : z1 * : 3\n"  # jo-dependent: (1 + 3) / 2 = 2
    )
    np.testing.assert_allclose(model.R[0, 0], 2.0)
    np.testing.assert_allclose(model.R[1:, 0], 1.0)
    np.testing.assert_allclose(model.R[0, 1], 1.0)
    np.testing.assert_allclose(model.R[1, 2], 1.0)
    np.testing.assert_allclose(model.R[:, 3], 5.0)
    np.testing.assert_allclose(model.R[0, 4], 2.0)
    np.testing.assert_allclose(model.R[:, 5], 1.0)


def test_later_transition_entries_change_the_reduced_reward() -> None:
    model = body(
        "T: * :\nuniform\nO: * :\nuniform\n"
        "R: * : * : s2 : * : 3\n"
        "T: * :\nidentity\n"  # after the reward: only s' = s2 from s2 earns the reward
    )
    np.testing.assert_array_equal(model.R, [[0.0] * 6, [0.0] * 6, [3.0] * 6])


@pytest.mark.parametrize(
    ("start", "expected"),
    [
        ("start:\n0.2 0.3 0.5\n", [0.2, 0.3, 0.5]),
        ("start: 0.2 0.3 0.5\n", [0.2, 0.3, 0.5]),
        ("start:\nuniform\n", [1 / 3] * 3),
        ("start: s1\n", [0, 1, 0]),
        ("start: 2\n", [0, 0, 1]),
        ("start:\ns1\n", [0, 1, 0]),
        ("start include: s0 2\n", [0.5, 0, 0.5]),
        ("start exclude: s1\n", [0.5, 0, 0.5]),
        ("", [1 / 3] * 3),
    ],
)
def test_start_forms(start: str, expected: list[float]) -> None:
    model = body("T: * :\nuniform\n", head=HEAD.replace("start: uniform\n", start))
    np.testing.assert_allclose(model.b0, expected)


def test_preamble_in_any_order_quotes_comments_and_counts() -> None:
    text = """\
# a comment line
observations:   # trailing comment
2
"y0" "y1"
states: 2
start: "s1"
actions:
"go" stay
3
discount: 0.5
agents: 2
values: "cost"

T: * :   # blank lines and comments anywhere
identity
O: * :
uniform
R: go * : * : * : * : 2
"""
    with pytest.raises(DpomdpParseError, match=r"test\.dpomdp:2: 'agents:' must come before"):
        parse_dpomdp(text, "test.dpomdp")
    reordered = text.replace("agents: 2\n", "").replace("# a comment line\n", "agents: 2\n")
    model = parse_dpomdp(reordered, "test.dpomdp")
    assert model.state_names == ("s0", "s1")
    np.testing.assert_array_equal(model.b0, [0, 1])
    assert model.action_names == (("go", "stay"), ("a0", "a1", "a2"))
    assert model.observation_names == (("o0", "o1"), ("y0", "y1"))
    assert model.discount == 0.5
    # values: cost negates the rewards
    np.testing.assert_array_equal(model.R[:, :3], -2.0)
    np.testing.assert_array_equal(model.R[:, 3:], 0.0)


def test_named_agents_and_no_space_before_colon() -> None:
    model = parse_dpomdp(
        HEAD.replace("agents: 2", "agents: alice bob")
        + "T: * :\nuniform\nO: * :\nuniform\nR: a1 b2: s0: *: *: -2\n",
        "named.dpomdp",
    )
    assert model.agent_names == ("alice", "bob")
    assert model.R[0, 5] == -2.0


# ----------------------------------------------------------------------------- errors
BAD = [
    ("T: a0 b9 : s0 : s0 : 1\n", 12, "unknown action 'b9' of agent 1"),
    ("T: a0 b3 : s0 : s0 : 1\n", 12, "unknown action 'b3'"),
    ("T: 0 3 : s0 : s0 : 1\n", 12, r"action index 3 of agent 1 is out of range \[0, 3\)"),
    ("T: 6 : s0 : s0 : 1\n", 12, r"joint action index 6 is out of range \[0, 6\)"),
    ("T: a0 b0 : s7 : s0 : 1\n", 12, "unknown state 's7'"),
    ("T: a0 b0 : 3 : s0 : 1\n", 12, r"state index 3 is out of range \[0, 3\)"),
    ("T: a0 b0 : s0 : s0 : 0.x\n", 12, "bad number '0.x'"),
    ("T: a0 b0 : s0 : s0 : nan\n", 12, "non-finite"),
    ("T: a0 b0 : s0 :\n0.5 0.5\n", 13, "expected 3 values for a T row, found 2"),
    ("T: a0 b0 :\n1 0 0\n0 1 0\nO: * :\nuniform\n", 15, "expected row 2 of a 3x3 T matrix"),
    ("T: a0 b0 :\n1 0 0\n0 1 zero\n0 0 1\n", 14, "bad number 'zero'"),
    ("T: a0 b0 : s0\n", 12, "expected 'T: <joint action>"),
    ("T: a0 b0 b1 : s0 : s0 : 1\n", 12, "expected 2 action tokens"),
    ("O: a0 b0 : s0 : z0 : 1\n", 12, "expected 2 observation tokens"),
    ("O: a0 b0 : s0 : z0 y2 : 1\n", 12, "unknown observation 'y2'"),
    ("O: a0 b0 :\nidentity\n", 13, "expected row 0 of a O matrix|expected 4 values"),
    ("R: a0 b0 : s0 : * : * \n", 12, "expected 'R: <joint action>"),
    ("R: * : s0 : s0 :\n1 2 3\n", 13, "expected 4 values for an R row"),
    ("T: * :\nuniform\nX: 1\n", 14, "expected a T:, O: or R: entry, found 'X: 1'"),
    ("T: * :\nuniform\ndiscount: 0.9\n", 14, "preamble entries must come before the body"),
    ("T: * :\n", 12, "expected a 3x3 T matrix, found end of file"),
]


@pytest.mark.parametrize(("text", "line", "message"), BAD)
def test_malformed_body_reports_line(text: str, line: int, message: str) -> None:
    with pytest.raises(DpomdpParseError, match=message) as info:
        body(text)
    assert info.value.line == line
    assert info.value.path == "test.dpomdp"
    assert str(info.value).startswith(f"test.dpomdp:{line}: ")


BAD_PREAMBLE = [
    ("discount: 0.9\n", "", 11, "missing 'discount:' in the preamble"),
    ("discount: 0.9\n", "discount: fast\n", 2, "bad number 'fast' for discount"),
    ("discount: 0.9\n", "discount: 1.5\n", 2, r"discount 1.5 is outside \[0, 1\]"),
    ("values: reward\n", "values: profit\n", 3, "expected 'reward' or 'cost'"),
    ("states: s0 s1 s2\n", "states: s0 s1 s0\n", 4, "duplicate states name 's0'"),
    ("states: s0 s1 s2\n", "states: 0\n", 4, "expected a positive number of states"),
    ("states: s0 s1 s2\n", "states: s0 1x\n", 4, "bad states name '1x'"),
    ("start: uniform\n", "start: s0 s1\n", 5, "expected 3 start probabilities"),
    ("start: uniform\n", "start: s5\n", 5, "unknown state 's5'"),
    ("start: uniform\n", "start: 0.5 0.5 x\n", 5, "bad number 'x'"),
    ("start: uniform\n", "start exclude: s0 s1 s2\n", 5, "leaves no start state"),
    ("start: uniform\n", "start: uniform\nstart include: s0\n", 6, "duplicate 'start include:'"),
    ("b0 b1 b2\n", "", 8, "expected a line of actions for agent 1, found entry 'observations:'"),
    ("agents: 2\n", "agents: 2\nfoo: 1\n", 2, "expected a preamble entry .* found 'foo: 1'"),
    ("agents: 2\n", "agents: 2\nhello\n", 2, "expected a preamble entry"),
]


@pytest.mark.parametrize(("old", "new", "line", "message"), BAD_PREAMBLE)
def test_malformed_preamble_reports_line(old: str, new: str, line: int, message: str) -> None:
    with pytest.raises(DpomdpParseError, match=message) as info:
        body("T: * :\nuniform\n", head=HEAD.replace(old, new))
    assert info.value.line == line


def test_validation_error_after_parsing() -> None:
    text = HEAD + "T: * :\nuniform\nT: a0 b0 : s1 :\n0.5 0.4 0\nO: * :\nuniform\n"
    with pytest.raises(
        ModelValidationError,
        match=r"^test: T row for joint action \(a0, b0\), state s1 sums to 0\.9, expected 1",
    ):
        parse_dpomdp(text, "test.dpomdp")
    assert parse_dpomdp(text, "test.dpomdp", validate=False).T[0, 1, 1] == 0.4


def _dectiger_text() -> str:
    path = DATA / "dectiger.dpomdp"
    return path.read_text() if path.is_file() else HEAD + "T: * :\nuniform\nO: * :\nuniform\n"


VOCABULARY = [
    "*", "0", "1", "2", "7", "-1", "0.5", "+20", "1e400", "nan", "uniform", "identity", ":",
    "listen", "tiger-left", "hear-left", "foo", "T:", "R:", "start:", "agents:", '"', "#", "",
]  # fmt: skip


@st.composite
def mutated_dectiger(draw: st.DrawFn) -> str:
    lines = _dectiger_text().splitlines()
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "replace_line", "replace_token"]))
        if action == "delete":
            del lines[index]
        elif action == "duplicate":
            lines.insert(draw(st.integers(0, len(lines))), lines[index])
        elif action == "replace_line":
            lines[index] = lines[draw(st.integers(0, len(lines) - 1))]
        else:
            tokens = lines[index].replace(":", " : ").split() or [""]
            position = draw(st.integers(0, len(tokens) - 1))
            tokens[position] = draw(st.sampled_from(VOCABULARY))
            lines[index] = " ".join(tokens)
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=mutated_dectiger())
def test_mutated_dectiger_only_raises_user_errors(text: str) -> None:
    try:
        model = parse_dpomdp(text, "dectiger.dpomdp")
    except InfJespError as error:
        assert "\n" not in str(error)
        if isinstance(error, DpomdpParseError):
            assert 1 <= error.line <= text.count("\n") + 1
    else:
        model.validate()


# ----------------------------------------------------------------------------- writer
def assert_same_model(a: DecPOMDP, b: DecPOMDP) -> None:
    for field in ("T", "O", "R", "b0"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), field)
    for field in (
        "agent_names",
        "state_names",
        "action_names",
        "observation_names",
        "discount",
    ):
        assert getattr(a, field) == getattr(b, field), field


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_writer_round_trips_shared_files(name: str) -> None:
    model = load(name)
    assert_same_model(model, parse_dpomdp(format_dpomdp(model), name))


def test_writer_round_trips_gamma_names_and_dense_rewards(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    model = body("T: * :\nuniform\nO: * :\nuniform\n").with_discount(0.123456789)
    T = rng.dirichlet(np.ones(3), size=(6, 3))
    T[0, 0] = [0.0, 1.0, 0.0]  # a sparse row is written entry by entry
    O = rng.dirichlet(np.ones(4), size=(6, 3))  # noqa: E741
    R = rng.normal(size=(3, 6))
    R[1, 2] = 0.0
    from dataclasses import replace

    model = replace(model, agent_names=("alice", "bob"), T=T, O=O, R=R, b0=[0.1, 0.2, 0.7])
    path = tmp_path / "random.dpomdp"
    write_dpomdp(model, path)
    assert [p.name for p in tmp_path.iterdir()] == ["random.dpomdp"]  # no temporary file left
    again = read_dpomdp(path)
    assert_same_model(model, again)
    assert again.name == "random"
    with pytest.raises(ValueError, match="cannot write state name 'has space'"):
        format_dpomdp(replace(model, state_names=("has space", "s1", "s2")))
