"""Read and write MADP ``.dpomdp`` files.

The grammar (MADP Toolbox, ``problems/example.dpomdp`` and ``src/parser/dpomdp.spirit``), with
the laxities real files need:

* Preamble, keys in any order, each at most once: ``agents:`` (count or names), ``discount:``,
  ``values: reward|cost``, ``states:`` (count or names), ``start:`` (``|S|`` probabilities,
  ``uniform``, or one state name/index, on the same or the next line), ``start include: ...`` /
  ``start exclude: ...`` (uniform over a subset / its complement), ``actions:`` and
  ``observations:`` followed by one line per agent (count or names). ``agents:`` must come before
  ``actions:``/``observations:``; ``values:`` defaults to ``reward`` and ``start:`` to uniform.
* Body: ``T:``, ``O:`` and ``R:`` entries in scalar, row and matrix forms (``uniform`` and, for
  T, ``identity``); a joint action/observation is one token (``*`` or a joint index) or one token
  per agent (name, index or ``*``); states are names, indices or ``*``. A later entry overwrites
  an earlier one where they overlap.
* ``#`` starts a comment that runs to the end of the line; blank lines are ignored; double quotes
  around identifiers are dropped; numbers may carry a ``+``.
* Rewards may depend on s' and jo. They are stored as R(s, ja, s', jo) while parsing (densely only
  for the joint actions that need it) and reduced at the end to
  ``R(s, ja) = Σ_{s', jo} T(s'|s, ja) O(jo|ja, s') R(s, ja, s', jo)``, so later T/O entries count.
* ``values: cost`` negates every reward: the model always holds rewards to maximise.
* Entities given as a count get the names ``s0, s1, ...`` (states), ``a0, ...`` (actions) and
  ``o0, ...`` (observations); agents given as a count are named ``"0", "1", ...``.

The writer emits names in the preamble and indices in the body, ``values: reward``, and floats
with ``repr`` so that a written model reads back bit for bit.

Shape legend as in :mod:`infjesp.model` (JA joint actions, S states, JO joint observations).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from infjesp.errors import DpomdpParseError
from infjesp.model import DecPOMDP

__all__ = ["format_dpomdp", "parse_dpomdp", "read_dpomdp", "write_dpomdp"]

# The dense arrays T (JA, S, S) and O (JA, S, JO) are capped so that a corrupted count fails with
# a message rather than exhausting memory (Mars needs 2.4e6, fireFighting_2_3_3 1.7e6 entries).
MAX_DENSE_ENTRIES = 50_000_000

_PREAMBLE_KEYS = (
    "agents",
    "discount",
    "values",
    "states",
    "start",
    "start include",
    "start exclude",
    "actions",
    "observations",
)
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")

# A selector indexes one axis: a slice (``*``), an int, or an int64 index array.
Selector = slice | int | np.ndarray
_ALL = slice(None)


class _Parser:
    """One pass over the lines of a ``.dpomdp`` text."""

    def __init__(self, text: str, path: str) -> None:
        self.path = path
        self.lines: list[tuple[int, str]] = []
        raw_lines = text.replace('"', "").splitlines()
        for number, raw in enumerate(raw_lines, start=1):
            content = raw.split("#", 1)[0].strip()
            if content:
                self.lines.append((number, content))
        self.last_line = max(len(raw_lines), 1)
        self.pos = 0
        self.line = 0
        # Raw preamble entries, keyed by their preamble key, with the line each was read on:
        # single-line entries (tokens) and per-agent entries (actions/observations: token lines).
        self.preamble: dict[str, tuple[int, list[str]]] = {}
        self.per_agent: dict[str, tuple[int, list[list[str]]]] = {}
        self.cache: dict[tuple[str, str], Selector] = {}

    # ------------------------------------------------------------ helpers
    def error(self, reason: str, line: int | None = None) -> DpomdpParseError:
        return DpomdpParseError(self.path, self.line if line is None else line, reason)

    def next_line(self, expected: str) -> str:
        """The next non-blank line; raises at end of file naming what was expected."""
        if self.pos >= len(self.lines):
            raise self.error(f"expected {expected}, found end of file", self.last_line)
        self.line, content = self.lines[self.pos]
        self.pos += 1
        return content

    def data_tokens(self, expected: str) -> list[str]:
        """Tokens of the next line, which must be data (not a ``key:`` entry)."""
        content = self.next_line(expected)
        if ":" in content:
            raise self.error(f"expected {expected}, found entry {_quote(content)}")
        return content.split()

    def numbers(self, tokens: list[str], count: int, what: str) -> np.ndarray:
        if len(tokens) != count:
            raise self.error(f"expected {count} values for {what}, found {len(tokens)}")
        try:
            values = np.array(tokens, dtype=np.float64)
        except ValueError:
            bad = next((t for t in tokens if not _is_number(t)), " ".join(tokens))
            raise self.error(f"bad number {_quote(bad)} in {what}") from None
        if not np.all(np.isfinite(values)):
            raise self.error(f"non-finite number in {what}")
        return values

    def number(self, token: str, what: str) -> float:
        try:
            value = float(token)
        except ValueError:
            raise self.error(f"bad number {_quote(token)} for {what}") from None
        if not math.isfinite(value):
            raise self.error(f"non-finite number {_quote(token)} for {what}")
        return value

    def count_or_names(self, tokens: list[str], what: str) -> tuple[str, ...]:
        if not tokens:
            raise self.error(f"expected a count or names of {what}")
        if len(tokens) == 1 and (tokens[0].isascii() and tokens[0].isdigit()):
            count = int(tokens[0])
            if count < 1:
                raise self.error(f"expected a positive number of {what}, found {count}")
            if count > MAX_DENSE_ENTRIES:
                raise self.error(f"{count} {what} is too many")
            return tuple(f"{what[0]}{i}" for i in range(count))
        for token in tokens:
            if not _IDENTIFIER.fullmatch(token):
                raise self.error(
                    f"bad {what} name {_quote(token)}: expected a letter followed by letters, "
                    "digits, '_' or '-'"
                )
        if len(set(tokens)) != len(tokens):
            duplicate = next(t for t in tokens if tokens.count(t) > 1)
            raise self.error(f"duplicate {what} name {_quote(duplicate)}")
        return tuple(tokens)

    # ----------------------------------------------------------- preamble
    def parse_preamble(self) -> None:
        while self.pos < len(self.lines):
            self.line, content = self.lines[self.pos]
            head, colon, rest = content.partition(":")
            key = " ".join(head.split())
            if colon and key in ("T", "O", "R"):
                return
            if not colon or key not in _PREAMBLE_KEYS:
                raise self.error(
                    "expected a preamble entry (agents:, discount:, values:, states:, start:, "
                    f"actions:, observations:) or a T:/O:/R: entry, found {_quote(content)}"
                )
            self.pos += 1
            if self._has_entry(key) or (
                key.startswith("start") and any(k.startswith("start") for k in self.preamble)
            ):
                raise self.error(f"duplicate '{key}:' entry")
            tokens = rest.split()
            if key in ("actions", "observations"):
                if not self._has_entry("agents"):
                    raise self.error(f"'agents:' must come before '{key}:'")
                num_agents = len(self._agent_names())
                lines: list[list[str]] = [tokens] if tokens else []
                while len(lines) < num_agents:
                    lines.append(self.data_tokens(f"a line of {key} for agent {len(lines)}"))
                self.per_agent[key] = (self.line, lines)
                continue
            if key == "start" and not tokens:
                tokens = self.data_tokens("the start distribution after 'start:'")
            if not tokens:
                raise self.error(f"expected a value after '{key}:'")
            self.preamble[key] = (self.line, tokens)

    def _has_entry(self, key: str) -> bool:
        """Whether the preamble has a ``key:`` entry (single-line or per-agent)."""
        return key in self.preamble or key in self.per_agent

    def _agent_names(self) -> tuple[str, ...]:
        line, tokens = self.preamble["agents"]
        return _agents(self, line, tokens)

    def build_preamble(self) -> None:
        """Turn the raw preamble entries into names, sizes, discount and b0."""
        for key in ("agents", "discount", "states", "actions", "observations"):
            if not self._has_entry(key):
                raise self.error(
                    f"missing '{key}:' in the preamble (expected before the first T:/O:/R: entry)"
                )
        self.agent_names = self._agent_names()
        line, tokens = self.preamble["discount"]
        self.line = line
        if len(tokens) != 1:
            raise self.error(f"expected one number after 'discount:', found {len(tokens)} tokens")
        self.discount = self.number(tokens[0], "discount")
        if not 0.0 <= self.discount <= 1.0:
            raise self.error(f"discount {self.discount} is outside [0, 1]")
        self.cost = False
        if "values" in self.preamble:
            self.line, tokens = self.preamble["values"]
            if tokens not in (["reward"], ["cost"]):
                raise self.error(f"expected 'reward' or 'cost' after 'values:', found {tokens}")
            self.cost = tokens == ["cost"]
        self.line, tokens = self.preamble["states"]
        self.state_names = self.count_or_names(tokens, "states")
        self.state_index = {name: i for i, name in enumerate(self.state_names)}
        self.action_names = self._per_agent("actions")
        self.observation_names = self._per_agent("observations")
        self.action_index = [{n: i for i, n in enumerate(names)} for names in self.action_names]
        self.observation_index = [
            {n: i for i, n in enumerate(names)} for names in self.observation_names
        ]
        self.num_actions = tuple(len(a) for a in self.action_names)
        self.num_observations = tuple(len(z) for z in self.observation_names)
        self.num_s = len(self.state_names)
        self.num_ja = math.prod(self.num_actions)
        self.num_jo = math.prod(self.num_observations)
        size = self.num_ja * self.num_s * max(self.num_s, self.num_jo)
        if size > MAX_DENSE_ENTRIES:
            self.line = self.preamble["states"][0]
            raise self.error(
                f"model too large for dense arrays: {self.num_ja} joint actions x {self.num_s} "
                f"states x {max(self.num_s, self.num_jo)} (limit {MAX_DENSE_ENTRIES} entries)"
            )
        self.action_table = _table(self.num_actions)
        self.observation_table = _table(self.num_observations)
        self.b0 = self._start()

    def _per_agent(self, key: str) -> tuple[tuple[str, ...], ...]:
        line, lines = self.per_agent[key]
        if len(lines) != len(self.agent_names):
            self.line = line
            raise self.error(f"expected {len(self.agent_names)} lines of {key}")
        self.line = line
        return tuple(self.count_or_names(tokens, key) for tokens in lines)

    def _start(self) -> np.ndarray:
        num_s = self.num_s
        for key in ("start include", "start exclude"):
            if key in self.preamble:
                self.line, tokens = self.preamble[key]
                chosen = np.zeros(num_s, dtype=bool)
                for token in tokens:
                    chosen[self.state(token)] = True
                if key == "start exclude":
                    chosen = ~chosen
                if not chosen.any():
                    raise self.error(f"'{key}:' leaves no start state")
                return chosen / chosen.sum()
        if "start" not in self.preamble:
            return np.full(num_s, 1.0 / num_s)
        self.line, tokens = self.preamble["start"]
        if tokens == ["uniform"]:
            return np.full(num_s, 1.0 / num_s)
        if len(tokens) == 1 and (tokens[0] in self.state_index or num_s > 1):
            b0 = np.zeros(num_s)
            b0[self.state(tokens[0])] = 1.0
            return b0
        if len(tokens) != num_s:
            raise self.error(
                f"expected {num_s} start probabilities, 'uniform' or one state after 'start:', "
                f"found {len(tokens)} tokens"
            )
        return self.numbers(tokens, num_s, "the start distribution")

    # ---------------------------------------------------------- selectors
    def state(self, token: str) -> Selector:
        """Selector of a state token: ``*``, an index or a name."""
        if token == "*":
            return _ALL
        index = self.state_index.get(token)
        if index is not None:
            return index
        if token.isascii() and token.isdigit():
            index = int(token)
            if index >= self.num_s:
                raise self.error(f"state index {index} is out of range [0, {self.num_s})")
            return index
        raise self.error(f"unknown state {_quote(token)}")

    def joint(self, text: str, kind: str) -> Selector:
        """Selector of a joint action (``kind="action"``) or joint observation."""
        key = (kind, text)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        if kind == "action":
            sizes, names, table = self.num_actions, self.action_index, self.action_table
        else:
            sizes, names, table = (
                self.num_observations,
                self.observation_index,
                self.observation_table,
            )
        total = table.shape[0]
        tokens = text.split()
        num_agents = len(sizes)
        if len(tokens) == 1 and (num_agents > 1 or tokens[0] == "*"):
            token = tokens[0]
            if token == "*":
                selector: Selector = _ALL
            elif token.isascii() and token.isdigit():
                selector = int(token)
                if selector >= total:
                    raise self.error(f"joint {kind} index {selector} is out of range [0, {total})")
            else:
                raise self.error(
                    f"expected {num_agents} {kind} tokens (one per agent) or a joint {kind} "
                    f"index, found {_quote(text)}"
                )
        elif len(tokens) == num_agents:
            mask = np.ones(total, dtype=bool)
            fixed = 0
            for agent, token in enumerate(tokens):
                if token == "*":
                    continue
                index = names[agent].get(token)
                if index is None:
                    if not (token.isascii() and token.isdigit()):
                        raise self.error(f"unknown {kind} {_quote(token)} of agent {agent}")
                    index = int(token)
                    if index >= sizes[agent]:
                        raise self.error(
                            f"{kind} index {index} of agent {agent} is out of range "
                            f"[0, {sizes[agent]})"
                        )
                mask &= table[:, agent] == index
                fixed += 1
            found = np.flatnonzero(mask)
            if fixed == 0:
                selector = _ALL
            elif fixed == num_agents:
                selector = int(found[0])
            else:
                selector = found
        else:
            raise self.error(
                f"expected {num_agents} {kind} tokens (one per agent) or a joint {kind} index, "
                f"found {len(tokens)} tokens in {_quote(text)}"
            )
        self.cache[key] = selector
        return selector

    # --------------------------------------------------------------- body
    def parse_body(self) -> None:
        num_ja, num_s, num_jo = self.num_ja, self.num_s, self.num_jo
        self.T = np.zeros((num_ja, num_s, num_s))
        self.O = np.zeros((num_ja, num_s, num_jo))
        self.R_base = np.zeros((num_ja, num_s))
        # Joint actions whose reward depends on (s', jo): dense (S, S', JO) blocks.
        self.R_dense: dict[int, np.ndarray] = {}
        handlers: dict[str, Callable[[list[str]], None]] = {
            "T": self.transition,
            "O": self.observation,
            "R": self.reward,
        }
        while self.pos < len(self.lines):
            content = self.next_line("a T:, O: or R: entry")
            head, colon, rest = content.partition(":")
            key = head.strip()
            handler = handlers.get(key)
            if not colon or handler is None:
                hint = " (preamble entries must come before the body)" if colon else ""
                raise self.error(f"expected a T:, O: or R: entry, found {_quote(content)}{hint}")
            fields = [f.strip() for f in rest.split(":")]
            handler(fields)

    def _fixed(self, fields: list[str], count: int, entry: str) -> list[str]:
        for field in fields[:count]:
            if not field:
                raise self.error(f"empty field in {entry}")
        return fields[:count]

    def transition(self, fields: list[str]) -> None:
        usage = "'T: <joint action> : <state> : <next state> : <prob>' (or a row/matrix form)"
        n = len(fields)
        if n == 4 and fields[3]:
            ja_text, s_text, sp_text, p_text = self._fixed(fields, 4, usage)
            self.T[self.joint(ja_text, "action"), self.state(s_text), self.state(sp_text)] = (
                self.number(p_text, "a transition probability")
            )
        elif n == 3 and not fields[2]:
            ja_text, s_text = self._fixed(fields, 2, usage)
            ja, s = self.joint(ja_text, "action"), self.state(s_text)
            tokens = self.data_tokens(f"a row of {self.num_s} transition probabilities")
            if tokens == ["uniform"]:
                self.T[ja, s, :] = 1.0 / self.num_s
            else:
                self.T[ja, s, :] = self.numbers(tokens, self.num_s, "a T row")
        elif (n == 2 and not fields[1]) or n == 1:
            ja = self.joint(self._fixed(fields, 1, usage)[0], "action")
            self.T[ja] = self.matrix(self.num_s, self.num_s, "T", allow_identity=True)
        else:
            raise self.error(f"expected {usage}")

    def observation(self, fields: list[str]) -> None:
        usage = (
            "'O: <joint action> : <next state> : <joint observation> : <prob>' (or a row/matrix)"
        )
        n = len(fields)
        if n == 4 and fields[3]:
            ja_text, sp_text, jo_text, p_text = self._fixed(fields, 4, usage)
            self.O[
                self.joint(ja_text, "action"),
                self.state(sp_text),
                self.joint(jo_text, "observation"),
            ] = self.number(p_text, "an observation probability")
        elif n == 3 and not fields[2]:
            ja_text, sp_text = self._fixed(fields, 2, usage)
            ja, sp = self.joint(ja_text, "action"), self.state(sp_text)
            tokens = self.data_tokens(f"a row of {self.num_jo} observation probabilities")
            if tokens == ["uniform"]:
                self.O[ja, sp, :] = 1.0 / self.num_jo
            else:
                self.O[ja, sp, :] = self.numbers(tokens, self.num_jo, "an O row")
        elif (n == 2 and not fields[1]) or n == 1:
            ja = self.joint(self._fixed(fields, 1, usage)[0], "action")
            self.O[ja] = self.matrix(self.num_s, self.num_jo, "O", allow_identity=False)
        else:
            raise self.error(f"expected {usage}")

    def reward(self, fields: list[str]) -> None:
        usage = (
            "'R: <joint action> : <state> : <next state> : <joint observation> : <reward>' "
            "(or a row/matrix form)"
        )
        n = len(fields)
        if n == 5 and fields[4]:
            ja_text, s_text, sp_text, jo_text, r_text = self._fixed(fields, 5, usage)
            ja, s = self.joint(ja_text, "action"), self.state(s_text)
            sp, jo = self.state(sp_text), self.joint(jo_text, "observation")
            value = self.number(r_text, "a reward")
            if isinstance(sp, slice) and isinstance(jo, slice):
                self.R_base[ja, s] = value
                for block in self._existing_blocks(ja):
                    block[s] = value
            else:
                for block in self._blocks(ja):
                    block[s, sp, jo] = value
        elif n == 4 and not fields[3]:
            ja_text, s_text, sp_text = self._fixed(fields, 3, usage)
            ja, s, sp = self.joint(ja_text, "action"), self.state(s_text), self.state(sp_text)
            row = self.numbers(
                self.data_tokens(f"a row of {self.num_jo} rewards"), self.num_jo, "an R row"
            )
            for block in self._blocks(ja):
                block[s, sp, :] = row
        elif n == 3 and not fields[2]:
            ja_text, s_text = self._fixed(fields, 2, usage)
            ja, s = self.joint(ja_text, "action"), self.state(s_text)
            matrix = self.matrix(self.num_s, self.num_jo, "R", allow_identity=False, uniform=False)
            for block in self._blocks(ja):
                block[s] = matrix
        else:
            raise self.error(f"expected {usage}")

    def _existing_blocks(self, ja: Selector) -> list[np.ndarray]:
        if not self.R_dense:
            return []
        return [self.R_dense[j] for j in _indices(ja, self.num_ja) if j in self.R_dense]

    def _blocks(self, ja: Selector) -> list[np.ndarray]:
        blocks = []
        for j in _indices(ja, self.num_ja):
            block = self.R_dense.get(j)
            if block is None:
                block = np.empty((self.num_s, self.num_s, self.num_jo))
                block[:] = self.R_base[j][:, None, None]
                self.R_dense[j] = block
            blocks.append(block)
        return blocks

    def matrix(
        self, rows: int, cols: int, what: str, *, allow_identity: bool, uniform: bool = True
    ) -> np.ndarray:
        """A rows x cols matrix on the next lines, or ``uniform`` / ``identity``."""
        first = self.data_tokens(f"a {rows}x{cols} {what} matrix")
        if uniform and first == ["uniform"]:
            return np.full((rows, cols), 1.0 / cols)
        if allow_identity and first == ["identity"]:
            return np.eye(rows, cols)
        out = np.empty((rows, cols))
        out[0] = self.numbers(first, cols, f"row 0 of a {what} matrix")
        for row in range(1, rows):
            tokens = self.data_tokens(f"row {row} of a {rows}x{cols} {what} matrix")
            out[row] = self.numbers(tokens, cols, f"row {row} of a {what} matrix")
        return out

    # ------------------------------------------------------------- result
    def model(self, name: str) -> DecPOMDP:
        R_SA = self.R_base.T.copy()  # (S, JA)
        for ja, block_SSO in self.R_dense.items():
            # Σ_{s', jo} T(s'|s, ja) O(jo|ja, s') R(s, ja, s', jo)
            R_SA[:, ja] = np.einsum(
                "st,to,sto->s", self.T[ja], self.O[ja], block_SSO, optimize=True
            )
        if self.cost:
            R_SA = -R_SA
        return DecPOMDP(
            agent_names=self.agent_names,
            state_names=self.state_names,
            action_names=self.action_names,
            observation_names=self.observation_names,
            T=self.T,
            O=self.O,
            R=R_SA,
            b0=self.b0,
            discount=self.discount,
            name=name,
        )


def _agents(parser: _Parser, line: int, tokens: list[str]) -> tuple[str, ...]:
    parser.line = line
    if len(tokens) == 1 and (tokens[0].isascii() and tokens[0].isdigit()):
        count = int(tokens[0])
        if not 1 <= count <= 64:
            raise parser.error(f"expected between 1 and 64 agents, found {count}")
        return tuple(str(i) for i in range(count))
    return parser.count_or_names(tokens, "agents")


def _table(sizes: tuple[int, ...]) -> np.ndarray:
    return np.stack(np.unravel_index(np.arange(math.prod(sizes)), sizes), axis=1)


def _indices(selector: Selector, total: int) -> list[int]:
    if isinstance(selector, slice):
        return list(range(total))
    if isinstance(selector, int):
        return [selector]
    return selector.tolist()


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _quote(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def parse_dpomdp(
    text: str, path: str = "<string>", *, validate: bool = True, name: str | None = None
) -> DecPOMDP:
    """Parse the text of a ``.dpomdp`` file.

    Args:
        text: The file contents.
        path: Shown in error messages as ``path:line:``.
        validate: Check that T, O and b0 are stochastic (:meth:`DecPOMDP.validate`). Turn off to
            get the raw model, e.g. for syntax tests.
        name: The model's name; defaults to the stem of ``path``.

    Returns:
        The parsed model, with the file's discount.

    Raises:
        DpomdpParseError: On a syntax error, naming ``path:line`` and what was expected.
        ModelValidationError: When ``validate`` and a row does not sum to 1.
    """
    parser = _Parser(text, path)
    parser.parse_preamble()
    parser.build_preamble()
    parser.parse_body()
    model = parser.model(Path(path).stem if name is None else name)
    if validate:
        model.validate()
    return model


def read_dpomdp(path: str | os.PathLike[str], *, validate: bool = True) -> DecPOMDP:
    """Read a ``.dpomdp`` file; see :func:`parse_dpomdp`.

    Raises:
        InfJespError: When the file cannot be read (``DpomdpParseError`` at line 0) or parsed.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DpomdpParseError(str(path), 0, f"cannot read file: {exc.strerror}") from None
    return parse_dpomdp(text, str(path), validate=validate, name=path.stem)


# ---------------------------------------------------------------------- writer
def _check_name(name: str, what: str) -> str:
    if not _IDENTIFIER.fullmatch(name) or name in ("uniform", "identity", "reward", "cost"):
        raise ValueError(
            f"cannot write {what} name {name!r}: .dpomdp identifiers are a letter followed by "
            "letters, digits, '_' or '-'"
        )
    return name


def _row_text(row: np.ndarray) -> str:
    return " ".join(map(repr, row.tolist()))


def _write_stochastic(lines: list[str], key: str, array: np.ndarray, model: DecPOMDP) -> None:
    """T or O entries: a zero wildcard, then dense rows or sparse scalar entries."""
    lines.append(f"{key}: * : * : * : 0.0")
    action_table = model.joint_action_table()
    observation_table = model.joint_observation_table() if key == "O" else None
    cols = array.shape[2]
    for ja in range(array.shape[0]):
        ja_text = " ".join(map(str, action_table[ja]))
        for s in range(array.shape[1]):
            row = array[ja, s]
            nonzero = np.flatnonzero(row)
            if nonzero.size == 0:
                continue
            if nonzero.size * 4 > cols:
                lines.append(f"{key}: {ja_text} : {s} :")
                lines.append(_row_text(row))
                continue
            for k in nonzero.tolist():
                col = k if observation_table is None else " ".join(map(str, observation_table[k]))
                lines.append(f"{key}: {ja_text} : {s} : {col} : {float(row[k])!r}")


def format_dpomdp(model: DecPOMDP) -> str:
    """The ``.dpomdp`` text of a model.

    Names are written in the preamble; the body uses indices, full rows where a row is dense and
    single entries (after an all-zero wildcard) where it is sparse, and the reduced reward R(s, ja).
    Floats are written with ``repr`` so that ``parse_dpomdp(format_dpomdp(m))`` reproduces every
    array bit for bit.

    Raises:
        ValueError: When a name is not a valid ``.dpomdp`` identifier.
    """
    num_agents = model.num_agents
    default_agents = model.agent_names == tuple(str(i) for i in range(num_agents))
    agents = (
        str(num_agents)
        if default_agents
        else " ".join(_check_name(a, "agent") for a in model.agent_names)
    )
    lines = [
        f"# {model.name or 'model'}: written by infjesp (MADP .dpomdp format)",
        f"agents: {agents}",
        f"discount: {model.discount!r}",
        "values: reward",
        "states: " + " ".join(_check_name(s, "state") for s in model.state_names),
        "start:",
        _row_text(model.b0),
        "actions:",
        *(" ".join(_check_name(a, "action") for a in names) for names in model.action_names),
        "observations:",
        *(
            " ".join(_check_name(z, "observation") for z in names)
            for names in model.observation_names
        ),
    ]
    _write_stochastic(lines, "T", model.T, model)
    _write_stochastic(lines, "O", model.O, model)
    lines.append("R: * : * : * : * : 0.0")
    action_table = model.joint_action_table()
    for s, ja in np.argwhere(model.R != 0).tolist():
        ja_text = " ".join(map(str, action_table[ja]))
        lines.append(f"R: {ja_text} : {s} : * : * : {float(model.R[s, ja])!r}")
    return "\n".join(lines) + "\n"


def write_dpomdp(model: DecPOMDP, path: str | os.PathLike[str]) -> None:
    """Write a model as a ``.dpomdp`` file, atomically (temporary file + ``os.replace``)."""
    path = Path(path)
    text = format_dpomdp(model)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
