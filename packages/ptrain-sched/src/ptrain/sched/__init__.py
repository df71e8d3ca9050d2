"""ptrain.sched: the ONES elastic batch-size GPU cluster scheduler.

A discrete-event trace simulator on the Pollux application tables, the policies ONES, FIFO, SRTF,
Tiresias, Optimus and a Pollux-style goodput optimiser behind one ``Policy.decide(state)``
interface, metrics, and a live runner that starts, stops and resizes torchrun jobs.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ptrain-sched")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
