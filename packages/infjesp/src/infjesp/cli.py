"""The ``infjesp`` command: info, evaluate, convert, solve.

Torch-free, so it does not use ptrain-core's CLI helpers; it follows the same conventions: a
user mistake (a malformed file, a bad value) is one line on stderr and exit code 2, ``--json PATH``
writes machine-readable results atomically ('-' for stdout), ``--version``.
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from infjesp.errors import InfJespError

# Same as infjesp.jesp.DEFAULT_KICKS (kept here so --help does not import numpy/scipy).
_DEFAULT_KICKS = 0

PROG = "infjesp"


# --------------------------------------------------------------------------- helpers
def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temp file + rename), or to stdout for ``'-'``."""
    text = json.dumps(obj, indent=2) + "\n"
    if os.fspath(path) == "-":
        sys.stdout.write(text)
        return
    target = Path(path)
    handle, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class _Entry(Protocol):
    """A command entry point: ``main()`` or ``main(argv)``, returning the exit code."""

    def __call__(self, argv: list[str] | None = None, /) -> int: ...


def _cli_entry(function: _Entry) -> _Entry:
    """User errors → one line ``infjesp: error: ...`` on stderr and exit code 2."""

    @functools.wraps(function)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return function(argv)
        except SystemExit as exit_request:
            code = exit_request.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        except (InfJespError, FileNotFoundError, IsADirectoryError, PermissionError) as error:
            if os.environ.get("INFJESP_DEBUG"):
                raise
            message = str(error)
            if isinstance(error, OSError) and error.filename is not None:
                message = f"{error.filename}: {error.strerror}"
            print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"{PROG}: error: interrupted", file=sys.stderr)
            return 130

    return wrapper


def _discount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _load(problem: Path, discount: float | None) -> Any:
    from infjesp.io import read_dpomdp

    model = read_dpomdp(problem)
    return model if discount is None else model.with_discount(discount)


# --------------------------------------------------------------------------- commands
def _run_info(args: argparse.Namespace) -> int:
    from infjesp.model import best_constant_joint_action, mdp_value, qmdp_value

    model = _load(args.problem, args.discount)
    info: dict[str, Any] = {
        "problem": args.problem.name,
        "agents": model.num_agents,
        "states": model.num_states,
        "actions": list(model.num_actions),
        "observations": list(model.num_observations),
        "joint_actions": model.num_joint_actions,
        "joint_observations": model.num_joint_observations,
        "discount": model.discount,
        "valid": True,
    }
    print(
        f"{args.problem.name}: {model.num_agents} agents, {model.num_states} states, "
        f"actions {list(model.num_actions)}, observations {list(model.num_observations)}, "
        f"discount {model.discount:g} — valid"
    )
    if model.discount < 1.0:
        constant_value, joint_action = best_constant_joint_action(model)
        names = [model.action_names[i][a] for i, a in enumerate(joint_action)]
        info["best_constant_value"] = constant_value
        info["best_constant_joint_action"] = names
        info["qmdp_upper_bound"] = qmdp_value(model)
        info["mdp_upper_bound"] = mdp_value(model)
        print(
            f"  bounds at gamma {model.discount:g}: best constant {constant_value:.4f} "
            f"({' '.join(names)}) <= V* <= QMDP {info['qmdp_upper_bound']:.4f} "
            f"<= MDP {info['mdp_upper_bound']:.4f}"
        )
    else:
        print("  discount 1: finite-horizon model; pass --discount 0.9 for infinite-horizon bounds")
    if args.json:
        write_json(args.json, info)
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from infjesp.fsc import evaluate_value, read_fscs_json, simulate_joint

    model = _load(args.problem, args.discount)
    model.require_infinite_horizon()
    fscs = read_fscs_json(args.policy, model)
    exact = evaluate_value(model, fscs)  # exact, over the reachable (node, state) pairs
    rng = np.random.default_rng(args.seed)
    if args.simulator == "pomdp-py":
        from infjesp.fsc import simulate_joint_pomdp_py

        mc_mean, mc_ci95 = simulate_joint_pomdp_py(model, fscs, args.episodes, None, rng)
    else:
        mc_mean, mc_ci95 = simulate_joint(model, fscs, args.episodes, None, rng)
    result = {"value": float(exact), "mc_mean": float(mc_mean), "mc_ci95": float(mc_ci95)}
    # The simulator truncates episodes where the discounted tail is below 1e-3 (its default).
    agrees = abs(mc_mean - exact) <= mc_ci95 + 1e-3
    print(
        f"{args.problem.name} at gamma {model.discount:g}: exact value {exact:.6f}; "
        f"Monte-Carlo {mc_mean:.4f} ± {mc_ci95:.4f} ({args.episodes} episodes"
        f"{', agrees' if agrees else ', OUTSIDE the 95% interval'})"
    )
    if args.json:
        write_json(args.json, result)
    return 0


def _run_convert(args: argparse.Namespace) -> int:
    from infjesp.fsc import read_fscs_json, to_dot

    model = _load(args.problem, None)
    fscs = read_fscs_json(args.policy, model)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for agent, fsc in enumerate(fscs):
        path = out / f"agent{agent}.dot"
        path.write_text(to_dot(model, fsc, agent))
        print(f"wrote {path} ({fsc.num_nodes} nodes)")
    return 0


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0.0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def print_progress(event: dict[str, Any]) -> None:
    """One stderr line per best response (top level, so worker processes can run it)."""
    mark = "accepted" if event.get("accepted") else "kept"
    print(
        f"restart {event.get('restart', 0)} iteration {event['iteration']} agent {event['agent']}: "
        f"value {event['value']:.6f} (candidate {event['candidate']:.6f}, {mark})",
        file=sys.stderr,
        flush=True,
    )


def _run_solve(args: argparse.Namespace) -> int:
    from infjesp.fsc import write_fscs_json
    from infjesp.jesp import solve

    model = _load(args.problem, args.discount)
    model.require_infinite_horizon()
    quiet = args.quiet or (args.quiet is None and not sys.stderr.isatty())
    result = solve(
        model,
        restarts=args.restarts,
        init=args.init,
        seed=args.seed,
        time_limit=args.time_limit,
        workers=args.workers,
        max_nodes=args.max_nodes,
        epsilon=args.epsilon,
        max_iterations=args.max_iterations,
        on_progress=None if quiet else print_progress,
        kicks=args.kicks,
    )
    summary: dict[str, Any] = {
        "value": float(result.value),
        "upper_bound": float(result.upper_bound),
        "fsc_sizes": [int(n) for n in result.fsc_sizes],
        "iterations": int(result.iterations),
        "time_s": float(result.time_s),
        "problem": args.problem.name,
        "discount": model.discount,
        "init": args.init,
        "restarts": args.restarts,
        "seed": args.seed,
        "source": result.source,
        "runs": result.runs,
    }
    # With --json -, stdout carries only the JSON document.
    report = sys.stderr if args.json == "-" else sys.stdout
    print(
        f"{args.problem.name} at gamma {model.discount:g}: value {result.value:.6f} "
        f"(QMDP upper bound {result.upper_bound:.4f}), FSC sizes {list(result.fsc_sizes)}, "
        f"{result.iterations} best responses, {result.time_s:.1f} s",
        file=report,
    )
    if args.out:
        write_fscs_json(args.out, model, result.fscs, args.problem.name, model.discount)
        print(f"wrote {args.out}", file=report)
    if args.json:
        write_json(args.json, summary)
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``infjesp`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Dec-POMDP tools: .dpomdp validation and bounds, exact and Monte-Carlo "
        "evaluation of joint finite-state controllers, Graphviz export.",
    )
    try:
        version = importlib.metadata.version("infjesp")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        version = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = commands.add_parser("info", help="sizes, discount, validation and value bounds")
    info.add_argument("problem", type=Path, help="a .dpomdp file")
    info.add_argument("--discount", type=_discount, default=None, help="override the file's")
    info.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': stdout)")

    evaluate = commands.add_parser(
        "evaluate", help="exact value of a joint FSC, with a Monte-Carlo check"
    )
    evaluate.add_argument("problem", type=Path)
    evaluate.add_argument("--policy", type=Path, required=True, help="infjesp-fsc/1 JSON")
    evaluate.add_argument("--discount", type=_discount, default=None, help="e.g. 0.9")
    evaluate.add_argument(
        "--episodes", type=_positive_int, default=10_000, help="Monte-Carlo runs (10000)"
    )
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument(
        "--simulator",
        choices=("numpy", "pomdp-py"),
        default="numpy",
        help="Monte-Carlo engine: vectorised numpy (default) or pomdp-py's Environment (slow)",
    )
    evaluate.add_argument("--json", metavar="PATH", help="write {value, mc_mean, mc_ci95}")

    convert = commands.add_parser("convert", help="write each agent's FSC as Graphviz DOT")
    convert.add_argument("problem", type=Path)
    convert.add_argument("--policy", type=Path, required=True, help="infjesp-fsc/1 JSON")
    convert.add_argument("--out", type=Path, required=True, help="directory for agent<i>.dot")

    solve = commands.add_parser(
        "solve", help="Inf-JESP: best joint FSC by alternating best responses, with restarts"
    )
    solve.add_argument("problem", type=Path, help="a .dpomdp file")
    solve.add_argument("--discount", type=_discount, default=None, help="e.g. 0.9 (must be < 1)")
    solve.add_argument("--seed", type=int, default=0)
    solve.add_argument(
        "--restarts", type=_positive_int, default=1, help="total independent JESP runs (1)"
    )
    solve.add_argument(
        "--time-limit",
        type=_positive_float,
        default=None,
        metavar="S",
        help="total wall-clock budget in seconds; the best joint FSC so far is returned",
    )
    solve.add_argument("--workers", type=_positive_int, default=1, help="processes (1)")
    solve.add_argument(
        "--init",
        default="auto",
        metavar="{auto,periodic,resync,reactive,ma,trajectory,md,ms,mdp,blind,random}",
        help="init of restart 0; auto (default): restart 0 periodic (the optimal finite-horizon "
        "joint policy, repeated), restart 1 resync (the centralised plan along its most likely "
        "trajectory, retrying a step or resynchronising on unexpected observations), restart 2 "
        "reactive (the best memory-one controllers), restart 3 ma, restart 4 trajectory (the "
        "same plan played open-loop); later restarts start from random FSCs",
    )
    solve.add_argument(
        "--max-nodes", type=_positive_int, default=100, help="FSC node cap per agent (100)"
    )
    solve.add_argument(
        "--kicks",
        type=int,
        default=_DEFAULT_KICKS,
        help=f"perturbation rounds per run after JESP converges (iterated local search; "
        f"{_DEFAULT_KICKS}; 0 = plain JESP)",
    )
    solve.add_argument(
        "--epsilon", type=float, default=1e-6, help="relative acceptance margin (1e-6)"
    )
    solve.add_argument(
        "--max-iterations", type=int, default=100, help="best responses per run (100)"
    )
    solve.add_argument("--json", metavar="PATH", help="write the results as JSON ('-': stdout)")
    solve.add_argument("--out", type=Path, help="write the joint FSC (infjesp-fsc/1 JSON)")
    progress = solve.add_mutually_exclusive_group()
    progress.add_argument(
        "--quiet",
        dest="quiet",
        action="store_true",
        default=None,
        help="no progress lines (default when stderr is not a terminal)",
    )
    progress.add_argument(
        "--progress", dest="quiet", action="store_false", help="progress lines on stderr"
    )
    return parser


_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": _run_info,
    "evaluate": _run_evaluate,
    "convert": _run_convert,
    "solve": _run_solve,
}


@_cli_entry
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``infjesp`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    return _HANDLERS[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
