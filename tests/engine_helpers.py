"""Launching a command on 2 CPU processes under each distributed engine, as `accelerate launch` does on GPUs.

| engine | accelerate configuration | CPU specifics |
| --- | --- | --- |
| ddp | ``recipes/accelerate/ddp.yaml`` | ``ACCELERATE_USE_CPU`` (gloo) |
| zero2 | ``recipes/accelerate/zero2.yaml`` | ``DS_ACCELERATOR=cpu``, ``--ddp_backend gloo``, ``--use_cpu false`` |
| zero3 | ``zero3.yaml``'s settings as ``tests/distributed/zero3_cpu.json`` | as zero2; ``stage3_param_persistence_threshold: 0`` |
| fsdp | ``recipes/accelerate/fsdp.yaml`` (FSDP2) | ``ACCELERATE_USE_CPU``; ``tests/distributed/launch_on_cpu.py`` |

- DeepSpeed runs must not set accelerate's ``use_cpu`` (accelerate then silently drops DeepSpeed and runs
  plain DDP); the CPU comes from ``DS_ACCELERATOR=cpu`` and gloo from ``ddp_backend``.
- ZeRO-3 keeps parameters under 100k elements whole on every rank by default, which is every parameter
  of a tiny test model: the JSON file sets that threshold to 0 so each one is really partitioned (and
  takes ``zero3.yaml``'s other settings, since accelerate refuses a config file next to those keys).
- Every engine's command runs through ``launch_on_cpu.py``, which only changes anything for FSDP2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = REPO / "recipes" / "accelerate"
LAUNCHER = REPO / "tests" / "distributed" / "launch_on_cpu.py"
ENGINES = ("ddp", "zero2", "zero3", "fsdp")
SHARDED = ("zero3", "fsdp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def engine_launch(engine: str) -> tuple[list[str], dict[str, str], list[str]]:
    """``(accelerate launch flags, environment, extra command arguments)`` of ``engine`` on CPU processes."""
    deepspeed_env = {"DS_ACCELERATOR": "cpu"}
    deepspeed_args = ["--ddp_backend", "gloo", "--use_cpu", "false"]
    if engine == "ddp":
        return ["--config_file", str(ACCELERATE / "ddp.yaml")], {"ACCELERATE_USE_CPU": "true"}, []
    if engine == "zero2":
        return ["--config_file", str(ACCELERATE / "zero2.yaml")], deepspeed_env, deepspeed_args
    if engine == "zero3":
        flags = ["--use_deepspeed", "--deepspeed_config_file", str(REPO / "tests" / "distributed" / "zero3_cpu.json"),
                 "--zero3_init_flag", "true"]
        return flags, deepspeed_env, deepspeed_args
    if engine == "fsdp":
        return ["--config_file", str(ACCELERATE / "fsdp.yaml")], {"ACCELERATE_USE_CPU": "true"}, []
    raise ValueError(f"unknown engine {engine!r}")


def launch(engine: str, target: str, args: list[str], log: Path, timeout: int = 900,
           env: dict[str, str] | None = None, flags: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run ``target`` (a module, or a script path) on 2 CPU processes under ``engine``; output goes to ``log``.
    ``flags``: more ``accelerate launch`` flags (e.g. ``--fsdp_state_dict_type SHARDED_STATE_DICT``)."""
    engine_flags, engine_env, extra = engine_launch(engine)
    flags = [*engine_flags, *(flags or [])]
    base = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "DS_ACCELERATOR")}
    full_env = {**base, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **engine_env, **(env or {})}
    cmd = [str(Path(os.sys.executable).parent / "accelerate"), "launch", *flags, "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), str(LAUNCHER), target, *args, *extra]
    with open(log, "w") as out:
        return subprocess.run(cmd, cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def tail(log: Path, n: int = 4000) -> str:
    return log.read_text()[-n:]


def engine_artefacts(engine: str, checkpoint: Path) -> bool:
    """Whether ``checkpoint`` holds the state files only ``engine`` writes: proof that the engine really ran."""
    zero2 = any(checkpoint.glob("global_step*/mp_rank_00_model_states.pt"))
    zero3 = any(checkpoint.glob("global_step*/zero_pp_rank_1_mp_rank_00_model_states.pt"))  # partitioned weights
    fsdp = (checkpoint / "pytorch_model_fsdp.bin").exists() or any(checkpoint.glob("pytorch_model_fsdp_*"))
    found = {"zero2": zero2 and not zero3, "zero3": zero3, "fsdp": fsdp}
    return found[engine] if engine in found else not any(found.values())
