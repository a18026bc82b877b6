"""``<output_dir>/metrics.jsonl``: one JSON object per logging step, written by every trainer.

Shared by the pretrain/SFT trainer and the GRPO trainer (``rl`` imports it from here; this
package never imports ``rl``). Written by the main process only, so multi-process runs write each
record once.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from transformers import TrainerCallback

from policies.records import METRICS_FILE, write_json, write_text_atomic

logger = logging.getLogger(__name__)

DISCARDED_FILE = "metrics.discarded.jsonl"
SUMMARY_FILE = "train_summary.json"
_SUMMARY_KEYS = ("train_runtime", "train_samples_per_second", "train_steps_per_second", "train_loss")


def _jsonable(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsFileCallback(TrainerCallback):
    """Appends one JSON object per logging step to ``<output_dir>/metrics.jsonl``.

    On resume from ``checkpoint-N`` the records of steps after N (logged before the run died, and
    about to be redone) are moved to ``metrics.discarded.jsonl``: the file is never truncated and
    no step appears twice. The end-of-training summary (runtime, throughput) goes to
    ``train_summary.json`` instead.
    """

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / METRICS_FILE

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept, stale = [], []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                step = json.loads(line).get("step", 0)
            except json.JSONDecodeError:
                stale.append(line)  # cut by a crash
                continue
            (stale if step > state.global_step else kept).append(line)
        if stale:
            with open(self.path.with_name(DISCARDED_FILE), "a", encoding="utf-8") as f:
                f.write("\n".join(stale) + "\n")
            write_text_atomic(self.path, "".join(line + "\n" for line in kept))
            logger.info("resuming at step %d: moved %d later records to %s", state.global_step, len(stale), DISCARDED_FILE)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        if any(k in logs for k in _SUMMARY_KEYS[:3]):
            summary = {k: _jsonable(v) for k, v in logs.items()}
            write_json(self.path.parent / SUMMARY_FILE, {"step": state.global_step, **summary})
            return
        record = {"step": state.global_step, **{k: _jsonable(v) for k, v in logs.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
