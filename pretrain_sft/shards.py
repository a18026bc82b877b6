"""The extraction work area: per-rank parts written while encoding, merged into the cache at the end.

``CACHE.partial/`` sits next to the cache and holds::

    run.json                              # the encoding settings the parts were made with
    rank-000/part-<token>-00000/          # a complete datasets folder (written tmp + rename)
    rank-000/skipped-<token>.jsonl        # one line per skipped picture, flushed as it happens

Each rank writes only under its own ``rank-NNN`` folder. A part is renamed into place only when
complete, so after a crash every part present is whole: a re-run counts their ids as done.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import datasets

from policies.records import write_json

from .cache import (
    CacheError,
    CacheInfo,
    read_jsonl,
    rows_to_dataset,
    save_dataset_atomic,
)

RUN_FILE = "run.json"


def shard(items: list, rank: int, world_size: int) -> list:
    """The disjoint share of ``items`` that process ``rank`` of ``world_size`` handles."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    return items[rank::world_size]


class WorkArea:
    """The ``<cache>.partial`` folder of one cache."""

    def __init__(self, out: str | Path):
        out = Path(out).expanduser().resolve()
        self.root = out.with_name(f"{out.name}.partial")

    def prepare(self, info: CacheInfo) -> None:
        """Create the area, or check that parts left by an earlier run used the same encoding."""
        run_file = self.root / RUN_FILE
        if run_file.exists():
            earlier = CacheInfo.from_dict(json.loads(run_file.read_text()))
            if not earlier.same_encoding(info):
                raise CacheError(
                    f"{self.root} holds parts of an interrupted run with {earlier.describe()}, but this run uses "
                    f"{info.describe()}; re-run with the earlier settings to finish it, or delete {self.root}"
                )
            return
        self.root.mkdir(parents=True, exist_ok=True)
        write_json(run_file, info.to_dict())

    def part_folders(self) -> list[Path]:
        """Every complete part, in a stable order."""
        return sorted(p for p in self.root.glob("rank-*/part-*") if p.is_dir() and not p.name.startswith("."))

    def parts(self) -> list[datasets.Dataset]:
        return [datasets.load_from_disk(str(p)) for p in self.part_folders()]

    def done_ids(self) -> set[str]:
        """Ids encoded by complete parts (of this or an interrupted earlier run)."""
        return {row_id for part in self.parts() for row_id in part["id"]}

    def skipped(self) -> list[dict]:
        """Every skip logged by any rank, oldest first."""
        return [row for path in sorted(self.root.glob("rank-*/skipped-*.jsonl")) for row in read_jsonl(path)]

    def writer(self, rank: int, rows_per_part: int) -> "ShardWriter":
        return ShardWriter(self.root / f"rank-{rank:03d}", rows_per_part)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


class ShardWriter:
    """Buffers encoded rows of one rank and writes them as complete parts of ``rows_per_part`` rows."""

    def __init__(self, folder: Path, rows_per_part: int):
        if rows_per_part < 1:
            raise ValueError(f"rows_per_part must be >= 1, got {rows_per_part}")
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows_per_part = rows_per_part
        self.token = uuid.uuid4().hex[:8]  # distinct names across runs and ranks
        self.buffer: list[dict] = []
        self.num_parts = 0
        self.num_rows = 0
        self.num_skipped = 0
        self._skip_log = open(self.folder / f"skipped-{self.token}.jsonl", "a", encoding="utf-8")

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= self.rows_per_part:
            self.flush()

    def skip(self, row_id: str, source: str, reason: str) -> None:
        self._skip_log.write(json.dumps({"id": row_id, "file": source, "reason": reason}) + "\n")
        self._skip_log.flush()
        self.num_skipped += 1

    def flush(self) -> None:
        if not self.buffer:
            return
        save_dataset_atomic(rows_to_dataset(self.buffer), self.folder / f"part-{self.token}-{self.num_parts:05d}")
        self.num_parts += 1
        self.num_rows += len(self.buffer)
        self.buffer = []

    def close(self) -> None:
        self.flush()
        self._skip_log.close()
