"""The demo's output folder: recognised by its own record, so ``--fresh`` only deletes what a demo wrote.

``simplear-rl demo`` writes ``demo_run.json`` into ``--out`` before its first stage. ``--fresh`` then removes
the stage folders and report files a demo writes (:data:`DEMO_ENTRIES`) and nothing else; a folder without
the record (a home folder, another run) is refused with exit 2, with or without ``--fresh``, unless it is empty.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from policies.commands import BadInput
from policies.records import write_json

DEMO_RECORD = "demo_run.json"
#: Everything a demo task writes directly under ``--out`` (stage folders, then report files).
DEMO_ENTRIES = ("data", "cache", "pretrain", "sft", "grpo", "eval",
                "report.md", "report.png", "report.json", "report.html", "filmstrip.png", "samples_before.png",
                "samples_after.png")


def prepare_demo_out(out: Path, task: str, fresh: bool) -> list[Path]:
    """Make ``out`` ready for demo ``task``; with ``fresh``, remove the demo's own entries first.

    Returns the removed paths. Raises :class:`BadInput` when ``out`` is a file, holds files but no demo
    record, or is another task's demo folder.
    """
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file, not a folder")
    record = out / DEMO_RECORD
    if out.is_dir() and any(out.iterdir()):
        if not record.is_file():
            raise BadInput(
                f"--out {out} holds files that no demo run wrote (no {DEMO_RECORD}); the demo neither deletes nor "
                "mixes into it. Pick an empty or new folder with --out"
            )
        made_by = json.loads(record.read_text(encoding="utf-8")).get("task")
        if made_by != task:
            raise BadInput(f"--out {out} is a `{made_by}` demo folder; run `--task {made_by}` there or pick another --out")
    removed = []
    if fresh:
        for name in DEMO_ENTRIES:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
            else:
                continue
            removed.append(path)
    out.mkdir(parents=True, exist_ok=True)
    write_json(record, {"task": task, "entries": list(DEMO_ENTRIES)})
    return removed
