"""Reading rows from the small record files users hand the toolkit (prompt sets, image META files)."""

from __future__ import annotations

import json
from pathlib import Path

#: Every trainer's per-step log in its output_dir (written by ``pretrain_sft.metrics``, read by ``rl.curves``).
METRICS_FILE = "metrics.jsonl"


class RecordsError(ValueError):
    """A record file that cannot be read; the message names the file (and line) and the fix."""


def read_records(path: str | Path, what: str = "file", text_key: str | None = None) -> list[dict]:
    """The rows of a JSONL file (one object per line), a JSON file (a list of objects, or
    ``{"data": [...]}``) or, when ``text_key`` is given, a plain-text file (one ``{text_key: line}``
    per non-blank line).

    ``what`` names the file in error messages (e.g. "prompt file", "META").
    """
    path = Path(path).expanduser()
    name = f"{what} {str(path)!r}"
    if not path.is_file():
        raise RecordsError(f"{name} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecordsError(f"{name} is not UTF-8 text") from None
    suffix = path.suffix.lower()
    if suffix == ".txt" and text_key is not None:
        return [{text_key: line.strip()} for line in text.splitlines() if line.strip()]
    if suffix == ".json" or (suffix != ".jsonl" and text.lstrip().startswith("[")):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as err:
            raise RecordsError(f"{name} is not valid JSON ({err.msg}); use a JSON list or JSONL (one object per line)") from None
        if isinstance(rows, dict) and isinstance(rows.get("data"), list):
            rows = rows["data"]
        if not isinstance(rows, list):
            raise RecordsError(f"{name} must hold a JSON list of objects, got {type(rows).__name__}")
    elif suffix == ".jsonl" or suffix not in (".txt",):
        rows = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RecordsError(f"line {n} of {name} is not valid JSON ({err.msg})") from None
    else:
        raise RecordsError(f"{name}: plain text is not accepted here; use JSONL (one object per line)")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RecordsError(f"row {i + 1} of {name} is a {type(row).__name__}, expected an object")
    return rows


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` beside ``path`` and rename it into place, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def write_jsonl(path: str | Path, rows) -> Path:
    """One JSON object per line, written atomically."""
    return write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in rows))


def write_json(path: str | Path, data) -> Path:
    """Indented JSON, written atomically."""
    return write_text_atomic(path, json.dumps(data, indent=2) + "\n")
