"""``ptrain-sched``: simulate, compare, serve, submit, status, cancel.

    ptrain-sched simulate --workload workload-6.csv --policy ones --gpus 64 --gpus-per-node 4 \\
        --seed 0 --json run.json
    ptrain-sched compare --workload workload-6.csv --gpus 64 --json compare.json
    ptrain-sched serve --spool /tmp/spool --slots 2          # live runner (CPU slots)
    ptrain-sched submit --spool /tmp/spool job.json
    ptrain-sched status --spool /tmp/spool
    ptrain-sched cancel --spool /tmp/spool JOB
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ptrain.core.cli import (
    UserError,
    add_json_argument,
    add_version_argument,
    cli_entry,
    positive_int,
    write_json,
)
from ptrain.sched.errors import InputError
from ptrain.sched.policies import POLICIES, make_policy
from ptrain.sched.report import format_table, plot_gantt
from ptrain.sched.sim import SimConfig, SimResult, models_for, simulate
from ptrain.sched.types import ClusterSpec
from ptrain.sched.workload import load_workload

__all__ = ["main", "run_simulation"]

PROG = "ptrain-sched"


def _add_sim_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workload",
        required=True,
        metavar="CSV",
        help="Pollux workload CSV (name,time,application,num_replicas,batch_size) "
        "or Gavel .trace file",
    )
    parser.add_argument("--gpus", type=positive_int, default=64, help="cluster GPUs (64)")
    parser.add_argument("--gpus-per-node", type=positive_int, default=4, help="GPUs per node (4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of stochastic policies (0)")
    parser.add_argument(
        "--tick", type=float, default=60.0, help="seconds between scheduling ticks (60)"
    )
    parser.add_argument(
        "--restart-penalty",
        type=float,
        default=30.0,
        help="seconds a job loses when its GPUs change (30, as Pollux)",
    )
    parser.add_argument(
        "--no-decide-on-events",
        action="store_true",
        help="call the policy on ticks only, not also on arrivals/completions",
    )
    parser.add_argument(
        "--traces",
        metavar="DIR",
        default=None,
        help="application tables (Pollux traces/<app>/*.csv; for Gavel traces the "
        "folder with simulation_throughputs.json) instead of the packaged ones",
    )
    ones = parser.add_argument_group("ONES options")
    ones.add_argument("--ones-population", type=positive_int, default=16, help="K (16)")
    ones.add_argument(
        "--ones-generations", type=int, default=1, help="generations per decision (1)"
    )
    ones.add_argument("--ones-crossover", type=float, default=0.5, help="ξ (0.5)")
    ones.add_argument("--ones-mutation", type=float, default=0.3, help="θ (0.3)")
    ones.add_argument(
        "--ones-predictor",
        choices=("history", "oracle"),
        default="history",
        help="progress predictor (history)",
    )
    ones.add_argument(
        "--ones-epoch-samples",
        type=float,
        default=None,
        help="samples per ONES epoch for growth limits (default: dataset size)",
    )
    ones.add_argument(
        "--ones-variant",
        choices=("jct", "artifact"),
        default="jct",
        help="jct (default): completion-rate fitness with restart cost, greedy-seeded "
        "population, goodput batch, no slow start; artifact: the ONES artifact's GPU-time "
        "fitness, slow start, linear batch rule, epoch update guard (see README)",
    )
    ones.add_argument(
        "--ones-fitness", choices=("jct", "gpu-time"), default=None, help="override the variant"
    )
    ones.add_argument(
        "--ones-growth", choices=("none", "epochs"), default=None, help="override the variant"
    )
    ones.add_argument(
        "--ones-rates", choices=("model", "table"), default=None, help="override the variant"
    )
    ones.add_argument(
        "--ones-batch-rule",
        choices=("goodput", "linear"),
        default=None,
        help="override the variant",
    )
    ones.add_argument(
        "--ones-update-guard",
        choices=("none", "time", "global", "per-job"),
        default=None,
        help="override the variant",
    )
    ones.add_argument(
        "--ones-greedy-seed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add greedy individuals to every generation (override the variant)",
    )
    ones.add_argument(
        "--ones-sample-prediction",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="sample ρ from the Beta instead of its mean (override the variant)",
    )
    ones.add_argument(
        "--ones-restart-weight",
        type=float,
        default=None,
        help="jct fitness: restart cost = weight × --restart-penalty (variant jct: 20)",
    )
    ones.add_argument(
        "--ones-restart-relative",
        type=float,
        default=None,
        help="jct fitness: extra restart cost as a fraction of remaining time (variant jct: 0.1)",
    )
    ones.add_argument(
        "--ones-start-weight",
        type=float,
        default=None,
        help="jct fitness: starting a waiting job costs weight × --restart-penalty "
        "(variant jct: 80)",
    )
    ones.add_argument(
        "--ones-unknown-factor",
        type=float,
        default=None,
        help="jct fitness: a job of an application never seen finishing needs this many "
        "times its work done (1)",
    )
    ones.add_argument(
        "--ones-update-interval",
        type=float,
        default=None,
        help="seconds a job keeps its GPUs after a change with --ones-update-guard time (600)",
    )
    ones.add_argument(
        "--ones-jct-exponent",
        type=float,
        default=None,
        help="jct fitness: minimise -Σ T_j^-q (variant jct: q = 1)",
    )


def _ones_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "population_size": args.ones_population,
        "generations_per_decision": args.ones_generations,
        "crossover_probability": args.ones_crossover,
        "mutation_rate": args.ones_mutation,
        "predictor": args.ones_predictor,
        "epoch_samples": args.ones_epoch_samples,
        "variant": args.ones_variant,
        **{
            key: value
            for key, value in (
                ("fitness", args.ones_fitness),
                ("growth", args.ones_growth),
                ("rates", args.ones_rates),
                ("batch_rule", args.ones_batch_rule),
                ("update_guard", args.ones_update_guard),
                ("seed_greedy", args.ones_greedy_seed),
                ("sample_prediction", args.ones_sample_prediction),
                ("restart_weight", args.ones_restart_weight),
                ("jct_exponent", args.ones_jct_exponent),
                ("restart_relative", args.ones_restart_relative),
                ("start_weight", args.ones_start_weight),
                ("unknown_factor", args.ones_unknown_factor),
                ("update_interval_seconds", args.ones_update_interval),
            )
            if value is not None
        },
    }


def run_simulation(args: argparse.Namespace, policy_name: str, seed: int) -> SimResult:
    """One simulation from parsed ``simulate``/``compare`` arguments."""
    try:
        cluster = ClusterSpec.from_gpus(args.gpus, args.gpus_per_node)
        config = SimConfig(
            tick=args.tick,
            restart_penalty=args.restart_penalty,
            decide_on_events=not args.no_decide_on_events,
        )
        options = _ones_options(args) if policy_name == "ones" else {}
        policy = make_policy(
            policy_name, seed=seed, restart_penalty=args.restart_penalty, **options
        )
    except ValueError as error:  # a config dataclass rejected a value
        raise InputError(str(error)) from None
    specs = load_workload(args.workload)
    models = models_for(specs, args.traces)
    extra = {"workload": str(args.workload), "traces": args.traces or "packaged"}
    if policy_name == "ones":
        extra["ones"] = options
    return simulate(
        specs, policy, cluster, models=models, config=config, seed=seed, extra_config=extra
    )


def _cmd_simulate(args: argparse.Namespace) -> int:
    if args.policy not in POLICIES:
        raise InputError(f"unknown policy {args.policy!r}; valid policies: {', '.join(POLICIES)}")
    result = run_simulation(args, args.policy, args.seed)
    row = {"policy": result.policy, **result.summary}
    if not args.quiet:
        print(format_table([row]))
        print(
            f"{len(result.records)}/{result.config['jobs_submitted']} jobs finished; "
            f"{result.events} events in {result.wall_s:.1f} s "
            f"({result.events / max(result.wall_s, 1e-9):.0f} events/s), "
            f"{len(result.latencies_ms)} decide() calls"
        )
    if args.json:
        write_json(args.json, result.to_json())
    if args.plot:
        plot_gantt(
            result.timeline,
            args.plot,
            num_gpus=args.gpus,
            title=f"{result.policy} on {Path(args.workload).name}",
        )
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    for name in policies:
        if name not in POLICIES:
            raise InputError(f"unknown policy {name!r}; valid policies: {', '.join(POLICIES)}")
    runs = []
    rows = []
    for name in policies:
        seeds = range(args.seed, args.seed + (args.seeds if name == "ones" else 1))
        results = [run_simulation(args, name, seed) for seed in seeds]
        per_seed = [{"seed": r.config["seed"], **r.summary} for r in results]
        mean = {
            key: sum(float(s[key]) for s in per_seed) / len(per_seed) for key in results[0].summary
        }
        rows.append({"policy": name, **mean})
        runs.append(
            {
                "policy": name,
                "seeds": [r.config["seed"] for r in results],
                "mean": mean,
                "per_seed": per_seed,
                "jobs": len(results[0].records),
                "events_per_s": sum(r.events / max(r.wall_s, 1e-9) for r in results) / len(results),
            }
        )
        if args.plot:
            stem = Path(args.plot)
            plot_gantt(
                results[0].timeline,
                stem.with_name(f"{stem.stem}-{name}{stem.suffix}"),
                num_gpus=args.gpus,
                title=f"{name} on {Path(args.workload).name}",
            )
    print(format_table(rows))
    if args.json:
        write_json(
            args.json,
            {
                "workload": str(args.workload),
                "gpus": args.gpus,
                "gpus_per_node": args.gpus_per_node,
                "results": runs,
            },
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="ONES elastic batch-size cluster scheduler: simulator and runner."
    )
    add_version_argument(parser, "ptrain-sched")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser("simulate", help="simulate one policy on a workload")
    _add_sim_arguments(sim)
    sim.add_argument(
        "--policy", required=True, metavar="POLICY", help=f"one of {', '.join(POLICIES)}"
    )
    add_json_argument(sim)
    sim.add_argument(
        "--plot",
        metavar="PNG",
        default=None,
        help="write a Gantt chart of GPU allocation (needs matplotlib)",
    )
    sim.add_argument("--quiet", action="store_true", help="print nothing")

    cmp = commands.add_parser("compare", help="simulate several policies on one workload")
    _add_sim_arguments(cmp)
    cmp.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help=f"comma-separated (default: {','.join(POLICIES)})",
    )
    cmp.add_argument(
        "--seeds", type=positive_int, default=1, help="seeds for ONES (stochastic), averaged (1)"
    )
    add_json_argument(cmp)
    cmp.add_argument(
        "--plot",
        metavar="PNG",
        default=None,
        help="write one Gantt chart per policy, PNG-<policy>.png",
    )

    from ptrain.sched import live

    live.add_commands(commands)
    return parser


@cli_entry(PROG)
def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except InputError as error:
        raise UserError(str(error)) from None


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "simulate":
        return _cmd_simulate(args)
    if args.command == "compare":
        return _cmd_compare(args)
    from ptrain.sched import live

    return live.run_command(args)


if __name__ == "__main__":
    sys.exit(main())
