"""A GRPO run that SIGKILLs its own process when step ``KILL_AT_STEP`` (environment) begins: a hard crash.

Run it like ``python -m rl.grpo`` (same arguments), directly or under ``accelerate launch`` through
``launch_on_cpu.py``; under a launcher every rank reaches the step and dies the same way.
"""

import os
import signal
import sys

from transformers import TrainerCallback

from rl.grpo import build_parser, build_trainer


class KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    script, args, model_args = build_parser().parse_args_and_config(sys.argv[1:])
    build_trainer(script, args, model_args, callbacks=[KillAt(int(os.environ["KILL_AT_STEP"]))]).train()
