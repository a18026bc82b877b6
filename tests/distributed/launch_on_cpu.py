"""Run ``python -m <module> <args>`` under ``accelerate launch`` on CPU processes, FSDP2 included.

accelerate 1.15 only turns ``ACCELERATE_USE_FSDP`` into ``DistributedType.FSDP`` for accelerator
back ends (``MULTI_GPU``, ``MULTI_XPU``, ...): on CPU processes it silently keeps ``MULTI_CPU``
(plain DDP) and ignores the FSDP plugin. This shim is the only test-only piece of the FSDP2 runs:
after accelerate has built its state from the launcher's environment (the same plugin and
``fsdp_config`` keys as ``recipes/accelerate/fsdp.yaml``), it switches a ``MULTI_CPU`` state to
``FSDP`` with that plugin, so ``Accelerator.prepare`` wraps the model with accelerate's own
``fully_shard`` path (``fsdp2_prepare_model``), exactly as on GPUs. Nothing else is changed.

Usage: ``accelerate launch [--use_fsdp ...] tests/distributed/launch_on_cpu.py <module or script.py> [args...]``
"""

from __future__ import annotations

import functools
import os
import runpy
import sys


def _force_fsdp_on_cpu() -> None:
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    @functools.wraps(original)
    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # Every later AcceleratorState() copies PartialState's fields over its own: switch both.
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: launch_on_cpu.py <module or script.py> [args...]")
    target, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        _force_fsdp_on_cpu()
    if target.endswith(".py"):
        runpy.run_path(target, run_name="__main__")
    else:
        runpy.run_module(target, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
