"""Check the wheels in dist/ (used by `nox -s build`).

    python tools/check_wheels.py DIST_DIR REPO_ROOT            # metadata checks
    python tools/check_wheels.py --import DIST_DIR REPO_ROOT   # import every package installed

Metadata checks, for every package under packages/: one wheel and one sdist exist; METADATA has
Name and Version equal to the pyproject's, Requires-Python set, every Requires-Dist parses; no
wheel ships ptrain/__init__.py (ptrain is a PEP 420 namespace); py.typed present; a license file
present; every [project.scripts] entry is in entry_points.txt.
"""

from __future__ import annotations

import argparse
import configparser
import importlib
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name


def _projects(root: Path) -> list[dict]:
    projects = []
    for pyproject in sorted((root / "packages").glob("*/pyproject.toml")):
        project = tomllib.loads(pyproject.read_text())["project"]
        projects.append(project)
    return projects


def _wheel_for(dist_dir: Path, name: str, version: str) -> Path:
    stem = canonicalize_name(name).replace("-", "_")
    wheels = sorted(dist_dir.glob(f"{stem}-{version}-*.whl"))
    if len(wheels) != 1:
        raise SystemExit(f"{dist_dir}: expected one wheel for {name} {version}, found {wheels}")
    sdists = sorted(dist_dir.glob(f"{stem}-{version}.tar.gz"))
    if len(sdists) != 1:
        raise SystemExit(f"{dist_dir}: expected one sdist for {name} {version}, found {sdists}")
    return wheels[0]


def _import_names(files: list[str]) -> list[str]:
    """Top-level import packages in a wheel; for the ptrain namespace, its subpackages."""
    names = set()
    for path in files:
        parts = path.split("/")
        if parts[0].endswith((".dist-info", ".data")) or len(parts) < 2:
            continue
        if parts[0] == "ptrain" and len(parts) >= 3:
            names.add(f"ptrain.{parts[1]}")
        elif parts[-1] == "__init__.py" and len(parts) == 2:
            names.add(parts[0])
    return sorted(names)


def check_wheel(wheel: Path, project: dict) -> list[str]:
    """All problems found in one wheel (empty when it is fine)."""
    problems: list[str] = []
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
        dist_info = next((f.split("/")[0] for f in files if f.endswith(".dist-info/METADATA")), "")
        metadata = Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points_text = (
            archive.read(f"{dist_info}/entry_points.txt").decode()
            if f"{dist_info}/entry_points.txt" in files
            else ""
        )
    if canonicalize_name(metadata.get("Name", "")) != canonicalize_name(project["name"]):
        problems.append(f"Name is {metadata.get('Name')!r}, expected {project['name']!r}")
    if metadata.get("Version") != project["version"]:
        problems.append(f"Version is {metadata.get('Version')!r}, expected {project['version']!r}")
    if not metadata.get("Requires-Python"):
        problems.append("Requires-Python is not set")
    for requirement in metadata.get_all("Requires-Dist") or []:
        try:
            Requirement(requirement)
        except InvalidRequirement as error:
            problems.append(f"Requires-Dist {requirement!r} does not parse: {error}")
    if "ptrain/__init__.py" in files:
        problems.append("ships ptrain/__init__.py, which breaks the ptrain namespace")
    if not any(f.endswith("/py.typed") for f in files):
        problems.append("no py.typed")
    if not any("/licenses/" in f or f.split("/")[-1].startswith("LICENSE") for f in files):
        problems.append("no license file")
    scripts = project.get("scripts", {})
    if scripts:
        parser = configparser.ConfigParser()
        parser.read_string(entry_points_text)
        declared = dict(parser["console_scripts"]) if parser.has_section("console_scripts") else {}
        for script, target in scripts.items():
            if declared.get(script, "").replace(" ", "") != target.replace(" ", ""):
                problems.append(f"console script {script} = {target} missing from entry points")
    if not _import_names(files):
        problems.append("contains no importable package")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dist_dir", type=Path)
    parser.add_argument("root", type=Path)
    parser.add_argument("--import", dest="do_import", action="store_true")
    args = parser.parse_args(argv)
    failures = 0
    for project in _projects(args.root):
        wheel = _wheel_for(args.dist_dir, project["name"], project["version"])
        if args.do_import:
            with zipfile.ZipFile(wheel) as archive:
                names = _import_names(archive.namelist())
            for name in names:
                importlib.import_module(name)
                print(f"{wheel.name}: import {name} ok")
            continue
        problems = check_wheel(wheel, project)
        for problem in problems:
            print(f"{wheel.name}: {problem}", file=sys.stderr)
        failures += bool(problems)
        if not problems:
            print(f"{wheel.name}: metadata ok")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
