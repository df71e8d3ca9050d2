"""A tiny elastic job for the live-runner tests: counts steps, checkpoints every step.

    python tiny_job.py --steps 20 [--sleep 0.05] [--crash-at 5]

With ``--crash-at K`` the first launch kills itself (SIGKILL) after checkpointing step K, so the
runner must restart it from that checkpoint.
"""

import argparse
import os
import signal
import time

from ptrain.sched.elastic import ElasticContext

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=20)
parser.add_argument("--sleep", type=float, default=0.05)
parser.add_argument("--crash-at", type=int, default=None)
args = parser.parse_args()

ctx = ElasticContext.from_env(default_batch_size=8)
state = ctx.load() or {"step": 0, "launches": []}
launches = [*state["launches"], [ctx.world_size, state["step"]]]
step = state["step"]
ctx.report(step, args.steps, launches=launches)
while step < args.steps:
    time.sleep(args.sleep)  # "training" one step on ctx.local_batch_size samples
    step += 1
    ctx.save({"step": step, "launches": launches})
    ctx.report(step, args.steps, launches=launches)
    if args.crash_at is not None and step == args.crash_at and len(launches) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if ctx.should_stop():
        raise SystemExit(0)
ctx.report(step, args.steps, done=True, launches=launches)
