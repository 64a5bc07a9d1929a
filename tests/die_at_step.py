"""``transmodal train`` as torchrun's worker, except that rank RANK kills itself (SIGKILL, as the out-of-memory
killer would) when it reaches step STEP: ``die_at_step.py RANK STEP train ARGS...`` (used by test_distributed.py)."""

import os
import signal
import sys

import transmodal
from transmodal.cli import main

rank, step = int(sys.argv[1]), int(sys.argv[2])
original_step = transmodal.Trainer.train_step


def step_or_die(self, source, target=None):
    if self.world.rank == rank and self.step == step:
        os.kill(os.getpid(), signal.SIGKILL)
    return original_step(self, source, target)


transmodal.Trainer.train_step = step_or_die
sys.exit(main(sys.argv[3:]))
