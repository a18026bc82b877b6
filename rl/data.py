"""Prompt sets for GRPO: JSONL / JSON / text files or HF datasets folders, short/long/mix captions."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import datasets
import pyarrow as pa

from policies.records import read_records

logger = logging.getLogger(__name__)


def _arrow_accepts(values: list) -> bool:
    try:
        datasets.Dataset.from_dict({"column": values})
    except (pa.lib.ArrowException, TypeError, ValueError):
        return False
    return True


def table_from_records(records: list[dict], where: str) -> datasets.Dataset:
    """A table with every column any record has (``None`` where a record lacks it).

    A column Arrow cannot type (e.g. GenEval's ``include`` entries, whose ``position`` is
    ``["left of", 0]``: text and a number in one list) is kept as JSON text, one string per row.
    """
    keys = list(dict.fromkeys(key for record in records for key in record))
    columns = {key: [record.get(key) for record in records] for key in keys}
    for key, values in columns.items():
        if not _arrow_accepts(values):
            columns[key] = [None if v is None else json.dumps(v) for v in values]
            logger.info("%s: column %r holds values Arrow cannot type; it is kept as JSON text", where, key)
    return datasets.Dataset.from_dict(columns)


def read_prompt_table(path: str | Path) -> datasets.Dataset:
    """The raw prompt table at ``path`` (file or ``save_to_disk`` folder)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"prompt set {str(path)!r} does not exist")
    if path.is_dir():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:  # datasets raises several types for a folder that is not a dataset
            raise ValueError(f"prompt folder {str(path)!r} is not a datasets folder saved with save_to_disk: {err}") from err
        if isinstance(loaded, datasets.DatasetDict):
            if "train" not in loaded:
                raise ValueError(f"prompt folder {str(path)!r} holds splits {list(loaded)}; expected a 'train' split")
            loaded = loaded["train"]
        return loaded
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".json", ".txt"):
        raise ValueError(f"prompt file {str(path)!r}: unsupported extension {suffix!r}; use .jsonl, .json, .txt or a datasets folder")
    records = read_records(path, what="prompt file", text_key="prompt")
    return table_from_records(records, f"prompt file {str(path)!r}")


def load_prompt_set(
    path: str | Path,
    prompt_length: str = "short",
    prompt_column: str = "prompt",
    long_prompt_column: str = "long_prompt",
    seed: int = 0,
    limit: int | None = None,
) -> datasets.Dataset:
    """A GRPO prompt dataset whose ``prompt`` column is the caption chosen by ``prompt_length``.

    ``short`` uses ``prompt_column``, ``long`` uses ``long_prompt_column``, ``mix`` picks one of them
    per row with a seeded coin. Both captions stay available as ``short_prompt`` / ``long_prompt``
    and every other column is kept as metadata for the rewards.
    """
    if prompt_length not in ("short", "long", "mix"):
        raise ValueError(f"prompt_length must be short, long or mix, got {prompt_length!r}")
    table = read_prompt_table(path)
    if limit is not None:
        table = table.select(range(min(limit, len(table))))
    if len(table) == 0:
        raise ValueError(f"prompt set {str(path)!r} is empty")
    columns = set(table.column_names)
    if prompt_column not in columns:
        raise ValueError(f"prompt set {str(path)!r} has no {prompt_column!r} column (columns: {sorted(columns)})")
    if prompt_length in ("long", "mix") and long_prompt_column not in columns:
        raise ValueError(
            f"prompt_length={prompt_length!r} needs a {long_prompt_column!r} column, but {str(path)!r} has only "
            f"{sorted(columns)}; use prompt_length: short or add long captions"
        )
    rng = random.Random(seed)

    def choose(row: dict) -> dict:
        short = row[prompt_column]
        long = row.get(long_prompt_column) or short
        use_long = prompt_length == "long" or (prompt_length == "mix" and rng.random() < 0.5)
        caption = long if use_long else short
        if not isinstance(caption, str) or not caption.strip():
            raise ValueError(f"prompt set {str(path)!r}: empty or non-text caption {caption!r}")
        return {"prompt": caption, "short_prompt": short, "long_prompt": long}

    drop = [c for c in (prompt_column,) if c != "prompt"]
    return table.map(choose, remove_columns=drop, load_from_cache_file=False, desc=None)
