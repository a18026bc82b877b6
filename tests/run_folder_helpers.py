"""Shared pieces of the run-folder tests: hashing a run, and cutting a checkpoint off mid-save."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def cut_off(checkpoint: Path, partial: str) -> None:
    """Make ``checkpoint`` look like a save killed midway: an empty folder, or every file but trainer_state.json."""
    if partial == "empty":
        shutil.rmtree(checkpoint)
        checkpoint.mkdir()
    else:
        (checkpoint / "trainer_state.json").unlink()
