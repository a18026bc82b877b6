"""The token cache: a Hugging Face ``datasets`` folder of visual codes and captions.

Layout of ``CACHE/``::

    dataset_info.json, state.json, data-*.arrow   # datasets' save_to_disk
    simplear_cache.json                           # codec, codebook_size, downsample, resolution, grid
    skipped.jsonl                                 # pictures that were not encoded, with the reason

Columns: ``id``, ``source``, ``caption``, ``short_caption``, ``long_caption`` (strings, empty when
absent), ``codes`` (``h*w`` ints, raster order) and ``meta`` (JSON text of META's other fields).

A cache is only ever published whole: it is written to a temporary sibling folder and renamed
into place; replacing an existing cache renames the old one aside first and deletes it last, so
a failure at any point leaves either the old or the new cache complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import datasets

from policies.records import write_jsonl

INFO_FILE = "simplear_cache.json"
SKIPPED_FILE = "skipped.jsonl"
FORMAT_VERSION = 1

FEATURES = datasets.Features(
    {
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "caption": datasets.Value("string"),
        "short_caption": datasets.Value("string"),
        "long_caption": datasets.Value("string"),
        "codes": datasets.List(datasets.Value("int32")),
        "meta": datasets.Value("string"),
    }
)


class CacheError(ValueError):
    """A token cache is missing, malformed, empty or does not fit the policy; the message says which."""


@dataclass(frozen=True)
class CacheInfo:
    """What a cache was encoded with; training refuses a cache that does not fit the policy."""

    codec: str
    codebook_size: int
    downsample: int
    resolution: int
    grid: tuple[int, int]
    codec_kwargs: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))

    @property
    def num_image_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["grid"] = list(self.grid)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CacheInfo":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def same_encoding(self, other: "CacheInfo") -> bool:
        """Whether codes from ``other`` may be mixed with codes from this cache."""
        keys = ("codec", "codebook_size", "downsample", "resolution", "grid")
        return all(getattr(self, k) == getattr(other, k) for k in keys)

    def describe(self) -> str:
        kwargs = f" {self.codec_kwargs}" if self.codec_kwargs else ""
        return (
            f"codec {self.codec}{kwargs} (codebook_size {self.codebook_size}, downsample {self.downsample}) at "
            f"resolution {self.resolution} (grid {self.grid[0]}x{self.grid[1]})"
        )


# --------------------------------------------------------------------------- reading
def read_cache_info(path: str | Path) -> CacheInfo:
    """The :class:`CacheInfo` of a cache folder; errors name the folder and the fix."""
    folder = Path(path).expanduser()
    if not folder.exists():
        raise CacheError(f"token cache {str(folder)!r} does not exist; build it with `simplear-rl extract-tokens --out {folder}`")
    info_file = folder / INFO_FILE
    if not info_file.exists():
        raise CacheError(
            f"{str(folder)!r} is not a token cache (no {INFO_FILE}); build one with `simplear-rl extract-tokens`"
        )
    try:
        return CacheInfo.from_dict(json.loads(info_file.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CacheError(f"{info_file} is unreadable ({exc}); re-run extract-tokens into a new folder") from exc


def load_cache(path: str | Path) -> tuple[datasets.Dataset, CacheInfo]:
    """The cache's rows and info; refuses an empty cache or rows whose length is not ``h*w``."""
    info = read_cache_info(path)
    folder = Path(path).expanduser()
    empty = CacheError(f"token cache {str(folder)!r} is empty; its {SKIPPED_FILE} says why pictures were skipped")
    try:
        rows = datasets.load_from_disk(str(folder))
    except Exception as exc:  # datasets cannot even open a folder saved with zero rows
        state = folder / "state.json"
        if state.exists() and not json.loads(state.read_text()).get("_data_files"):
            raise empty from exc
        raise CacheError(f"token cache {str(folder)!r} is unreadable ({type(exc).__name__}: {exc}); re-extract it") from exc
    if len(rows) == 0:
        raise empty
    lengths = set(len(c) for c in rows.select(range(min(len(rows), 8)))["codes"])
    if lengths != {info.num_image_tokens}:
        raise CacheError(
            f"token cache {str(path)!r} holds rows of {sorted(lengths)} codes but its grid {info.grid} needs "
            f"{info.num_image_tokens}; the cache is corrupt, re-extract it"
        )
    return rows, info


def check_cache_fits(info: CacheInfo, codebook_size: int, where: str = "token cache") -> None:
    """Refuse a cache whose codebook differs from the policy's, naming both numbers."""
    if info.codebook_size != codebook_size:
        raise CacheError(
            f"{where} was encoded with codebook_size {info.codebook_size} ({info.codec}) but the policy has "
            f"codebook_size {codebook_size}; encode with the policy's codec or start from a matching policy"
        )


def check_cache_resolution(info: CacheInfo, resolution: int | None, where: str = "token cache") -> None:
    """Refuse a cache encoded at another resolution than the recipe's (when the recipe names one)."""
    if resolution is not None and info.resolution != resolution:
        raise CacheError(
            f"{where} was encoded at resolution {info.resolution} (grid {info.grid[0]}x{info.grid[1]}) but the "
            f"recipe asks for resolution {resolution}; point `cache` at a {resolution}-px cache or change `resolution`"
        )


def cached_ids(path: str | Path) -> set[str]:
    """Ids already in a cache (empty when there is none)."""
    folder = Path(path)
    if not (folder / INFO_FILE).exists():
        return set()
    return set(datasets.load_from_disk(str(folder))["id"])


# --------------------------------------------------------------------------- writing
@contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence datasets' own progress bars (saving, casting) under our extraction bar."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def rows_to_dataset(rows: Iterable[dict]) -> datasets.Dataset:
    """A dataset with the cache schema from row dicts (``meta`` as a dict or JSON text)."""
    table = {name: [] for name in FEATURES}
    for row in rows:
        for name in FEATURES:
            value = row.get(name, "")
            if name == "meta" and not isinstance(value, str):
                value = json.dumps(value)
            table[name].append(value)
    return datasets.Dataset.from_dict(table, features=FEATURES)


def save_dataset_atomic(dataset: datasets.Dataset, folder: Path) -> None:
    """``save_to_disk`` into a temporary sibling, then rename; ``folder`` must not exist."""
    tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}")
    dataset.save_to_disk(str(tmp))
    os.replace(tmp, folder)


def merge_parts(parts: list[datasets.Dataset]) -> datasets.Dataset:
    """Concatenate cache parts, keeping the first row of every id."""
    parts = [p if p.features == FEATURES else p.cast(FEATURES) for p in parts if len(p)]
    if not parts:
        return rows_to_dataset([])
    merged = datasets.concatenate_datasets(parts)
    seen: set[str] = set()
    keep = []
    for i, row_id in enumerate(merged["id"]):
        if row_id not in seen:
            seen.add(row_id)
            keep.append(i)
    return merged if len(keep) == len(merged) else merged.select(keep)


def check_replaceable(out: Path) -> None:
    """Refuse an output folder that exists, is not empty and is not a token cache (it would be replaced)."""
    if out.exists() and not (out / INFO_FILE).exists() and any(out.iterdir()):
        raise CacheError(f"{out} exists and is not a token cache; choose a new folder for the cache (it would be replaced)")


def publish_cache(dataset: datasets.Dataset, info: CacheInfo, out: str | Path, skipped: list[dict]) -> Path:
    """Write a complete cache to a temporary sibling of ``out`` and swap it into place.

    The old cache (if any) is renamed aside, the new one renamed in, and only then is the old one
    deleted. ``dataset`` may be memory-mapped from the old cache: its files stay readable until
    the end.
    """
    if len(dataset) == 0:
        raise CacheError(f"refusing to publish an empty token cache at {out}")
    out = Path(out).expanduser().resolve()
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    tmp = out.with_name(f".{out.name}.tmp-{token}")
    try:
        dataset.save_to_disk(str(tmp))
        (tmp / INFO_FILE).write_text(json.dumps({**info.to_dict(), "num_rows": len(dataset)}, indent=2) + "\n")
        write_jsonl(tmp / SKIPPED_FILE, skipped)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = out.with_name(f".{out.name}.old-{token}")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
