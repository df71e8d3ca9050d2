"""Regenerate a package README's results table from its benchmarks' JSON.

    python tools/results_table.py packages/ptrain-core            # rewrite the README section
    python tools/results_table.py packages/ptrain-core --check    # exit 1 if it is stale

Reads every ``benchmarks/results/*.json`` written by ``ptrain.core.bench.write_json`` (or a
benchmark following the same layout) and writes a markdown table between the markers
``<!-- results:start -->`` and ``<!-- results:end -->`` of the package README. The paper's number
for a row comes from ``benchmarks/results/paper.json`` (``{"<result name>": "text"}``), so it
sits beside ours. The table is generated, never hand-edited.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

START = "<!-- results:start -->"
END = "<!-- results:end -->"


def _format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def render(results_dir: Path) -> str:
    """The markdown table for every JSON file in ``results_dir``."""
    paper_path = results_dir / "paper.json"
    paper = json.loads(paper_path.read_text()) if paper_path.exists() else {}
    lines = [
        "| benchmark | ours | baseline | ratio | goal | paper / reference | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted(results_dir.glob("*.json")):
        if path.name == "paper.json":
            continue
        data = json.loads(path.read_text())
        command = data.get("meta", {}).get("command", "")
        environment = data.get("environment", {})
        for result in data.get("results", []):
            ratio = result.get("ratio")
            goal = result.get("goal")
            verdict = ""
            if goal is not None and ratio is not None:
                verdict = f"≤ {goal:.2f}× ({'met' if ratio <= goal else 'NOT met'})"
            lines.append(
                f"| {result['name']} | {_format_seconds(result.get('candidate_s'))} "
                f"| {_format_seconds(result.get('baseline_s'))} "
                f"| {'—' if ratio is None else f'{ratio:.2f}×'} | {verdict} "
                f"| {paper.get(result['name'], '—')} | `{command}` |"
            )
        if environment and data.get("results"):
            lines.append(
                f"| <sub>{path.name}: torch {environment.get('torch', '?')}, "
                f"{environment.get('cpu_count', '?')} CPUs, "
                f"{environment.get('timestamp', '')}</sub> ||||||| "
            )
    metric_lines = _render_metrics(results_dir, paper)
    if len(lines) == 2:  # no timing results: show only the metrics table
        return "\n".join(metric_lines)
    if metric_lines:
        lines += ["", *metric_lines]
    return "\n".join(lines)


def _render_metrics(results_dir: Path, paper: dict) -> list[str]:
    """Rows for JSON files with a ``metrics`` list: ``{"name", "values": {metric: value}}``."""
    lines = ["| run | metric | ours | paper / reference | command |", "|---|---|---|---|---|"]
    for path in sorted(results_dir.glob("*.json")):
        if path.name == "paper.json":
            continue
        data = json.loads(path.read_text())
        command = data.get("meta", {}).get("command", "")
        for entry in data.get("metrics", []):
            for metric, value in entry.get("values", {}).items():
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                reference = paper.get(f"{entry['name']}/{metric}", paper.get(entry["name"], "—"))
                lines.append(
                    f"| {entry['name']} | {metric} | {shown} | {reference} | `{command}` |"
                )
    return lines if len(lines) > 2 else []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path, help="the package directory, e.g. packages/x")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README is stale")
    args = parser.parse_args(argv)
    readme = args.package / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"{readme}: missing {START} / {END} markers", file=sys.stderr)
        return 2
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    table = render(args.package / "benchmarks" / "results")
    updated = f"{head}{START}\n{table}\n{END}{tail}"
    if args.check:
        if updated != text:
            print(f"{readme}: results table is stale; run python tools/results_table.py")
            return 1
        return 0
    readme.write_text(updated)
    print(f"{readme}: results table rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
