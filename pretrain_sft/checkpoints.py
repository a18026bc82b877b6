"""Finding the checkpoint a run resumes from (shared by pretrain/SFT, GRPO, the demo and ablations)."""

from __future__ import annotations

from pathlib import Path

from transformers.trainer_utils import get_last_checkpoint


def has_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a complete ``checkpoint-N`` (one whose trainer state was written)."""
    return any(Path(folder).glob("checkpoint-*/trainer_state.json"))


def resolve_resume(value: str | bool | None, output_dir: str | Path) -> str | None:
    """``resume_from_checkpoint`` as a folder for ``Trainer.train``, or None for a fresh run.

    ``last`` / ``true`` mean the newest ``checkpoint-N`` in ``output_dir``; anything else must be a
    checkpoint folder. Both are checked here, before anything loads.
    """
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in ("last", "true"):
        last = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
        if last is None:
            raise FileNotFoundError(f"resume_from_checkpoint={value!r} but {str(output_dir)!r} holds no checkpoint-N folder")
        return last
    if not Path(value).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint {value!r} is not a checkpoint folder")
    return str(value)
