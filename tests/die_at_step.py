"""``transmodal train`` as torchrun's worker, except that rank RANK kills itself (SIGKILL, as the out-of-memory
killer would) when it reaches step STEP, or with STEP ``start`` as the run starts (its trainer built, the run
directory not yet shared): ``die_at_step.py RANK STEP train ARGS...`` (used by test_distributed.py)."""

import os
import signal
import sys

import transmodal
import transmodal.run
from transmodal.cli import main

rank, step = int(sys.argv[1]), sys.argv[2]
original_step = transmodal.Trainer.train_step
original_seed_rank = transmodal.run._seed_rank


def step_or_die(self, source, target=None):
    if self.world.rank == rank and str(self.step) == step:
        os.kill(os.getpid(), signal.SIGKILL)
    return original_step(self, source, target)


def seed_rank_or_die(experiment, world):
    if world.rank == rank and step == "start":
        os.kill(os.getpid(), signal.SIGKILL)
    return original_seed_rank(experiment, world)


transmodal.Trainer.train_step = step_or_die
transmodal.run._seed_rank = seed_rank_or_die
sys.exit(main(sys.argv[3:]))
