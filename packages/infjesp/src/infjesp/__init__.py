"""infjesp: Dec-POMDPs with finite-state controllers (Inf-JESP, arXiv:2109.08755). Torch-free.

Modules:
    io       the MADP ``.dpomdp`` parser and writer
    model    ``DecPOMDP`` (dense T, O, R over joint actions/observations), value bounds
    fsc      deterministic finite-state controllers: exact joint evaluation, Monte-Carlo, JSON, DOT
    finite   the original finite-horizon JESP and brute-force optima (a reference mode)
    bestresponse, pbvi, extract   the best-response POMDP, its point-based solver, FSC extraction
    inits, jesp                   initial controllers and the JESP loop with restarts (``solve``)
"""

from importlib.metadata import PackageNotFoundError, version

from infjesp.errors import DpomdpParseError, InfJespError, ModelValidationError
from infjesp.fsc import FSC, evaluate_joint, read_fscs_json, simulate_joint, write_fscs_json
from infjesp.io import parse_dpomdp, read_dpomdp, write_dpomdp
from infjesp.jesp import SolveResult, solve
from infjesp.model import DecPOMDP, best_constant_joint_action, mdp_value, qmdp_value

try:
    __version__ = version("infjesp")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "FSC",
    "DecPOMDP",
    "DpomdpParseError",
    "InfJespError",
    "ModelValidationError",
    "SolveResult",
    "__version__",
    "best_constant_joint_action",
    "evaluate_joint",
    "mdp_value",
    "parse_dpomdp",
    "qmdp_value",
    "read_dpomdp",
    "read_fscs_json",
    "simulate_joint",
    "solve",
    "write_dpomdp",
    "write_fscs_json",
]
