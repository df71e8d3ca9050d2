"""Every check of the monorepo. `nox` runs the default sessions; `nox -l` lists them all.

Packages are discovered at run time from packages/*/pyproject.toml, so a new package joins every
session without editing this file. Each package is tested alone in a fresh environment with only
its declared sibling closure installed (non-editable): the proof that `pip install <pkg>` works.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES_DIR = ROOT / "packages"
DIST_DIR = ROOT / "dist"

# torch is installed first, pinned, so that no resolver picks a multi-GB CUDA build.
TORCH_REQUIREMENT = os.environ.get("PTRAIN_TORCH", "torch==2.13.0")
RUFF_VERSION = "0.17.6"
MYPY_VERSION = "2.4.1"
# Non-strict to start: every public signature is annotated, but third-party stubs are partial.
MYPY_FLAGS = [
    "--ignore-missing-imports",
    "--check-untyped-defs",
    "--warn-unused-ignores",
    "--no-implicit-optional",
    "--show-error-codes",
]
TEST_REQUIREMENTS = ["pytest>=8", "hypothesis>=6"]
# Optional-dependency groups the demo and the test sessions install where a package declares
# them: the offline image data (scikit-learn's digits) the tour's image steps and their tests use.
DEMO_EXTRAS = ("data",)

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = False
nox.options.error_on_missing_interpreters = True
nox.options.sessions = ["lint", "typecheck", "tests", "integration", "build", "demo"]


# --------------------------------------------------------------------------- uv sees pip's links
def _pip_find_links() -> str:
    """pip's find-links, so uv (which ignores pip's config) finds the same local wheels."""
    if os.environ.get("PIP_FIND_LINKS"):
        return os.environ["PIP_FIND_LINKS"]
    try:
        completed = subprocess.run(
            [sys.executable, "-m", "pip", "config", "get", "global.find-links"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return completed.stdout.strip() if completed.returncode == 0 else ""


if not os.environ.get("UV_FIND_LINKS"):
    _links = _pip_find_links()
    if _links:
        # pip separates several links with whitespace; uv takes a comma-separated list.
        os.environ["UV_FIND_LINKS"] = ",".join(_links.split())


# --------------------------------------------------------------------------- package discovery
def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if match is None:
        raise ValueError(f"cannot read a package name from requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def _discover() -> dict[str, dict]:
    packages: dict[str, dict] = {}
    for pyproject in sorted(PACKAGES_DIR.glob("*/pyproject.toml")):
        data = tomllib.loads(pyproject.read_text())
        project = data["project"]
        packages[_requirement_name(project["name"])] = {
            "name": project["name"],
            "path": pyproject.parent,
            "dependencies": [_requirement_name(dep) for dep in project.get("dependencies", [])],
            "scripts": sorted(project.get("scripts", {})),
            "extras": sorted(project.get("optional-dependencies", {})),
        }
    return packages


PACKAGES = _discover()


def _sibling_closure(name: str) -> list[str]:
    """The package and every sibling it depends on, dependencies first."""
    ordered: list[str] = []

    def visit(current: str) -> None:
        if current in ordered:
            return
        for dependency in PACKAGES[current]["dependencies"]:
            if dependency in PACKAGES:
                visit(dependency)
        ordered.append(current)

    visit(name)
    return ordered


def _needs_torch(names: list[str]) -> bool:
    return any("torch" in PACKAGES[name]["dependencies"] for name in names)


def _install_packages(
    session: nox.Session, names: list[str], *extra: str, extras: tuple[str, ...] = ()
) -> None:
    """torch first (when needed), then the packages from their local paths, non-editable.

    All local paths go into one install command, so siblings resolve to these paths and never to
    an index (a different `ptrain` exists on PyPI). ``extras`` names optional-dependency groups
    to install with every package that declares them (e.g. ``("data",)``).
    """
    if _needs_torch(names):
        session.install(TORCH_REQUIREMENT)

    def target(name: str) -> str:
        chosen = [group for group in extras if group in PACKAGES[name]["extras"]]
        path = str(PACKAGES[name]["path"])
        return f"{path}[{','.join(chosen)}]" if chosen else path

    session.install(*(target(name) for name in names), *extra)


def _pytest(
    session: nox.Session,
    paths: list[Path],
    arguments: list[str] | None = None,
    success_codes: list[int] | None = None,
) -> None:
    """pytest with the root configuration; by default deselects `slow` and `gpu` tests."""
    if arguments is None:
        arguments = session.posargs or ["-m", "not slow and not gpu"]
    session.run(
        "pytest",
        "-c",
        str(ROOT / "pyproject.toml"),
        "--rootdir",
        str(ROOT),
        *(str(path) for path in paths),
        *arguments,
        success_codes=success_codes or [0],
    )


class _Timer:
    def __init__(self, session: nox.Session) -> None:
        self.session = session
        self.start = time.monotonic()

    def __enter__(self) -> _Timer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.session.log(f"{self.session.name} took {time.monotonic() - self.start:.1f} s")


# --------------------------------------------------------------------------- sessions
@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, and every README results table matches its JSON."""
    with _Timer(session):
        session.install(f"ruff=={RUFF_VERSION}")
        session.run("ruff", "check", ".")
        session.run("ruff", "format", "--check", ".")
        for name in PACKAGES:  # tables are generated from benchmarks/results/*.json, never edited
            session.run("python", str(ROOT / "tools" / "results_table.py"),
                        str(PACKAGES[name]["path"]), "--check")  # fmt: skip


@nox.session
@nox.parametrize("pkg", list(PACKAGES))
def tests(session: nox.Session, pkg: str) -> None:
    """One package's tests, alone, in a fresh environment (extra args go to pytest)."""
    with _Timer(session):
        _install_packages(session, _sibling_closure(pkg), *TEST_REQUIREMENTS, extras=DEMO_EXTRAS)
        _pytest(session, [PACKAGES[pkg]["path"] / "tests"])


@nox.session
def integration(session: nox.Session) -> None:
    """Every package installed together: cross-package tests and every console script."""
    with _Timer(session):
        _install_packages(session, list(PACKAGES), *TEST_REQUIREMENTS)
        _pytest(session, [ROOT / "tests" / "integration"])
        for name in PACKAGES:
            for script in PACKAGES[name]["scripts"]:
                session.run(script, "--help", silent=True)
                session.run(script, "--version")


@nox.session
def build(session: nox.Session) -> None:
    """sdist + wheel for every package into dist/, check their metadata, install and import."""
    with _Timer(session):
        session.install("build>=1.2", "packaging>=23")
        if DIST_DIR.exists():
            for old in DIST_DIR.iterdir():
                old.unlink()
        for name in PACKAGES:
            build_args = ["-m", "build", "--outdir", str(DIST_DIR)]
            if session.venv_backend == "uv":
                build_args += ["--installer", "uv"]
            session.run("python", *build_args, str(PACKAGES[name]["path"]), silent=True)
        session.run("python", str(ROOT / "tools" / "check_wheels.py"), str(DIST_DIR), str(ROOT))
        # A fresh environment: this session's venv has only build tools in it so far.
        wheels = sorted(str(wheel) for wheel in DIST_DIR.glob("*.whl"))
        if _needs_torch(list(PACKAGES)):
            session.install(TORCH_REQUIREMENT)
        session.install(*wheels)
        session.run(
            "python", str(ROOT / "tools" / "check_wheels.py"), "--import", str(DIST_DIR), str(ROOT)
        )


@nox.session
def demo(session: nox.Session) -> None:
    """The tour: one short step per package doing its main job (with the offline `data` extras)."""
    with _Timer(session):
        _install_packages(session, list(PACKAGES), extras=DEMO_EXTRAS)
        session.run("python", str(ROOT / "examples" / "tour.py"), *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every package's benchmarks; JSON results collected in bench-results/."""
    with _Timer(session):
        _install_packages(session, list(PACKAGES))
        out_dir = ROOT / "bench-results"
        out_dir.mkdir(exist_ok=True)
        for name in PACKAGES:
            for script in sorted((PACKAGES[name]["path"] / "benchmarks").glob("bench_*.py")):
                target = out_dir / f"{name}--{script.stem}.json"
                session.run("python", str(script), "--json", str(target), *session.posargs)
        session.log(f"results in {out_dir}")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over every package's src/ (non-strict; flags in MYPY_FLAGS above)."""
    with _Timer(session):
        _install_packages(session, list(PACKAGES), f"mypy=={MYPY_VERSION}")
        sources = [str(PACKAGES[name]["path"] / "src") for name in PACKAGES]
        session.run(
            "mypy",
            *MYPY_FLAGS,
            "--explicit-package-bases",
            *sources,
            env={"MYPYPATH": os.pathsep.join(sources)},
        )


@nox.session
def gpu(session: nox.Session) -> None:
    """Tests marked `gpu`, where CUDA is present (not in the default run).

    Set PTRAIN_TORCH to a CUDA build of torch (e.g. PTRAIN_TORCH=torch==2.13.0) on a GPU machine.
    """
    with _Timer(session):
        _install_packages(session, list(PACKAGES), *TEST_REQUIREMENTS)
        probe = "import torch; print(torch.cuda.is_available())"
        output = session.run("python", "-c", probe, silent=True) or ""
        if "True" not in str(output):
            session.skip("CUDA is not available")
        test_dirs = [PACKAGES[name]["path"] / "tests" for name in PACKAGES]
        # exit code 5: no test is marked gpu (yet)
        _pytest(session, test_dirs, ["-m", "gpu", *session.posargs], success_codes=[0, 5])
