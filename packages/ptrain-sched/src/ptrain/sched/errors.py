"""The package's user-error type, kept free of torch so the simulator imports fast.

``InputError`` is a mistake by the user (a bad file, value or request); its message is one line
naming the file, line and value. The ``ptrain-sched`` CLI reports it through ptrain-core's
``cli_entry`` as ``"ptrain-sched: error: <message>"`` with exit code 2.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(ValueError):
    """A mistake in user input; the message is one line."""
