"""A run folder's rules, shared by pretrain/SFT, GRPO, the demo and ablations.

- A ``checkpoint-N`` folder is COMPLETE once its ``trainer_state.json`` exists: the Trainer writes
  that file last, so a folder without it (empty, or every file but that one) is a save that was cut
  off. :func:`is_complete_checkpoint` is the one place that says so.
- ``resume_from_checkpoint: last`` (or ``true``) means the newest complete checkpoint; newer
  incomplete ones are skipped with a warning naming them and left where they are (never deleted).
- A new run never writes over an earlier one: an ``output_dir`` that holds checkpoints, weights or
  ``metrics.jsonl`` is refused unless the run resumes it or ``overwrite_output_dir`` moves the
  earlier run aside to ``<output_dir>.overwritten-<time>``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from policies.records import METRICS_FILE

logger = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME, written last in a checkpoint
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
#: Files whose presence at the top of an output_dir means an earlier run wrote there (besides checkpoint-N/).
EARLIER_RUN_FILES = (
    "config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
    "adapter_model.safetensors", "adapter_config.json", METRICS_FILE, "train_summary.json", "simplear_training.json",
)
OVERWRITE_HELP = (
    "Start a new run in an output_dir that holds an earlier one (checkpoints, weights or metrics.jsonl): "
    "everything in output_dir is first moved to a sibling folder <output_dir>.overwritten-<time> (nothing is "
    "deleted; remove it yourself when done). Without it such an output_dir is refused unless "
    "--resume_from_checkpoint continues the earlier run."
)


def checkpoint_folders(output_dir: str | Path) -> list[Path]:
    """Every ``checkpoint-N`` folder in ``output_dir``, complete or not, lowest N first."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def is_complete_checkpoint(folder: str | Path) -> bool:
    """Whether a checkpoint folder was fully saved: the Trainer writes ``trainer_state.json`` last."""
    return (Path(folder) / STATE_FILE).is_file()


def has_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` holds a complete ``checkpoint-N`` (something ``--resume_from_checkpoint last`` resumes)."""
    return any(is_complete_checkpoint(p) for p in checkpoint_folders(folder))


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint; newer incomplete ones are logged as skipped and left untouched."""
    folders = checkpoint_folders(output_dir)
    complete = [i for i, p in enumerate(folders) if is_complete_checkpoint(p)]
    if not complete:
        return None
    last, skipped = folders[complete[-1]], folders[complete[-1] + 1:]
    if skipped:
        logger.warning(
            "skipping incomplete checkpoint %s (no %s: its save was cut off; left in place, not deleted); the newest "
            "complete checkpoint is %s", ", ".join(str(p) for p in skipped), STATE_FILE, last,
        )
    return last


def resolve_resume(value: str | bool | None, output_dir: str | Path) -> str | None:
    """``resume_from_checkpoint`` as a folder for ``Trainer.train``, or None for a fresh run.

    ``last`` / ``true`` mean the newest COMPLETE ``checkpoint-N`` in ``output_dir``; anything else
    must be a complete checkpoint folder. Both are checked here, before anything loads.
    """
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    if str(value).lower() in ("last", "true"):
        last = last_complete_checkpoint(output_dir)
        if last is None:
            folders = checkpoint_folders(output_dir)
            if folders:
                raise FileNotFoundError(
                    f"resume_from_checkpoint={value!r} but every checkpoint in {str(output_dir)!r} is incomplete "
                    f"({', '.join(p.name for p in folders)}: no {STATE_FILE}, their save was cut off), so there is "
                    "nothing to resume; start again with --overwrite_output_dir true (moves the earlier run aside) "
                    "or choose a new output_dir"
                )
            raise FileNotFoundError(
                f"resume_from_checkpoint={value!r} but {str(output_dir)!r} holds no checkpoint-N folder"
            )
        return str(last)
    if not Path(value).is_dir():
        raise FileNotFoundError(f"resume_from_checkpoint {value!r} is not a checkpoint folder")
    if not is_complete_checkpoint(value):
        raise FileNotFoundError(
            f"resume_from_checkpoint {value!r} is an incomplete checkpoint (no {STATE_FILE}: its save was cut off); "
            "resume from an earlier checkpoint, or use --resume_from_checkpoint last for the newest complete one"
        )
    return str(value)


def earlier_run(output_dir: str | Path) -> list[str]:
    """What in ``output_dir`` shows an earlier run (checkpoint folders, weights, metrics); empty if none.

    An empty folder, or one holding only ``init-policy/`` (the tiny GRPO policy), is not an earlier run.
    """
    out = Path(output_dir)
    if not out.is_dir():
        return []
    return [p.name for p in checkpoint_folders(out)] + [name for name in EARLIER_RUN_FILES if (out / name).exists()]


def move_earlier_run_aside(output_dir: str | Path) -> Path:
    """Move everything in ``output_dir`` into a new sibling ``<output_dir>.overwritten-<time>``; returns it."""
    out = Path(output_dir).resolve()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = out.with_name(f"{out.name}.overwritten-{stamp}"), 1
    while aside.exists():
        n += 1
        aside = out.with_name(f"{out.name}.overwritten-{stamp}-{n}")
    aside.mkdir(parents=True)
    entries = sorted(out.iterdir())
    for entry in entries:
        os.replace(entry, aside / entry.name)
    logger.warning(
        "overwrite_output_dir: moved the earlier run in %s (%d files and folders) to %s; the new run starts empty",
        out, len(entries), aside,
    )
    return aside


def check_output_dir(output_dir: str | Path, resume: str | None, overwrite: bool = False) -> None:
    """Refuse to start a new run over an earlier one, unless resuming it or told to overwrite it.

    With ``overwrite`` the earlier run is moved aside (see :func:`move_earlier_run_aside`), never merged
    with the new one. Raises ``FileExistsError`` (bad input) naming the folder and both ways on.
    """
    earlier = earlier_run(output_dir)
    if not earlier:
        return
    if overwrite and resume is not None and Path(resume).resolve().is_relative_to(Path(output_dir).resolve()):
        raise ValueError(
            f"resume_from_checkpoint {resume!r} and overwrite_output_dir both set: overwriting would move the "
            "checkpoint to resume from aside; choose one"
        )
    if overwrite:
        move_earlier_run_aside(output_dir)
        return
    if resume is None:
        shown = ", ".join(earlier[:4]) + (", ..." if len(earlier) > 4 else "")
        raise FileExistsError(
            f"output_dir {str(output_dir)!r} already holds an earlier run ({shown}); continue it with "
            "--resume_from_checkpoint last, start again with --overwrite_output_dir true (moves the earlier run "
            "aside), or choose a new output_dir"
        )


def continue_flags(output_dir: str | Path) -> tuple[list[str], str]:
    """Flags that carry an unfinished run in ``output_dir`` on (for the demo and ablations), and why.

    A complete checkpoint: resume from the newest one. Earlier files with nothing to resume (no
    checkpoint yet, or only incomplete ones): start again, the earlier files moved aside, never deleted.
    Nothing there: no flags.
    """
    if has_checkpoint(output_dir):
        return ["--resume_from_checkpoint", "last"], f"resuming from the last complete checkpoint in {output_dir}"
    if earlier_run(output_dir):
        return ["--overwrite_output_dir", "true"], (
            f"{output_dir} holds an unfinished run with no complete checkpoint; starting it again (its earlier "
            "files are moved aside, not deleted)"
        )
    return [], ""


def prepare_output_dir(args) -> str | None:
    """The checkpoint a run resumes from (None: a fresh run), once ``output_dir`` is safe to write.

    ``args`` is the run's ``TrainingArguments`` (``output_dir``, ``resume_from_checkpoint``,
    ``overwrite_output_dir``). Call it before anything loads. Under several processes the main
    process checks (and moves aside) first and the others follow, so an overwrite happens once.
    """
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    with args.main_process_first(local=args.save_on_each_node, desc="checking output_dir"):
        check_output_dir(args.output_dir, resume, getattr(args, "overwrite_output_dir", False))
    return resume
