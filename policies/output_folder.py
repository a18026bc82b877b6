"""Output folders a command may write into: new, empty, or its own earlier output when asked to add to it.

A command that writes a folder of results (``generate``, ``eval``) records itself in ``simplear_output.json``.
Another command's folder, or a folder of files nothing here wrote, is refused (exit 2) rather than mixed
into; the command's own earlier output is refused too unless the caller adds to it (``generate --append``).
"""

from __future__ import annotations

import json
from pathlib import Path

from .commands import BadInput
from .records import write_json

OUTPUT_RECORD = "simplear_output.json"


def claim_output_folder(out: Path, command: str, append: bool = False, record: bool = True) -> int:
    """Create or take ``out`` for ``command``; returns the run index (0 for a new folder, k for the k-th append).

    Raises :class:`BadInput` for a file, a folder holding files no ``command`` run wrote, or ``command``'s own
    earlier output without ``append``. ``record=False`` writes no record (a benchmark layout such as GenEval's
    must hold nothing but its own folders), so only a new or empty folder is taken.
    """
    if out.exists() and not out.is_dir():
        raise BadInput(f"--out {out} is a file, not a folder")
    record_path = out / OUTPUT_RECORD
    previous = {"command": command, "runs": 0}
    # a folder holding nothing but the record (a run that failed before writing) counts as empty
    if out.is_dir() and any(entry.name != OUTPUT_RECORD for entry in out.iterdir()):
        if not record:
            raise BadInput(f"--out {out} is not empty: `simplear-rl {command}` writes only into a new or empty folder, "
                           "so nothing is mixed into earlier files")
        if not record_path.is_file():
            raise BadInput(f"--out {out} holds files that no `simplear-rl {command}` run wrote; pick a new or empty folder")
        previous = json.loads(record_path.read_text(encoding="utf-8"))
        if previous.get("command") != command:
            raise BadInput(f"--out {out} holds `simplear-rl {previous.get('command')}` output; pick a new or empty folder")
        if not append:
            hint = "pass --append to add this run to it, or " if command == "generate" else ""
            raise BadInput(f"--out {out} holds an earlier `simplear-rl {command}` run; {hint}pick a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    run = int(previous.get("runs", 0))
    if record:
        write_json(record_path, {"command": command, "runs": run + 1})
    return run
