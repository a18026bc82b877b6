"""Reading META: the list of pictures and captions that ``extract-tokens`` encodes.

META is a JSON file (a list of objects), a JSONL file (one object per line), a Hugging Face
``datasets`` folder (``save_to_disk``) with an image column, or a plain folder of pictures with captions in
``<stem>.txt`` files beside them (or in the folder's ``metadata.jsonl``, Hugging Face imagefolder style). Each row needs an image and at least
one of ``caption`` / ``short_caption`` / ``long_caption`` (rows without are skipped and reported);
any other fields are carried into the cache's ``meta`` column as JSON.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from policies.records import RecordsError
from policies.records import read_records as read_rows

CAPTION_FIELDS = ("caption", "short_caption", "long_caption")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass
class SourceRecord:
    """One picture to encode.

    ``image`` is a path, or a zero-argument loader for a picture stored in a dataset (decoded only
    when the record is encoded). ``id`` is unique within META and is what resuming skips on.
    """

    id: str
    image: Any
    source: str
    caption: str
    short_caption: str = ""
    long_caption: str = ""
    meta: dict = field(default_factory=dict)
    problem: str = ""  #: why the row cannot be encoded (no image / no caption); empty when fine


class MetaError(ValueError):
    """META cannot be read; the message names the file, the row and the fix."""


def _is_dataset_folder(path: Path) -> bool:
    return path.is_dir() and any((path / f).exists() for f in ("dataset_info.json", "state.json", "dataset_dict.json"))


def read_records(
    meta: str | Path,
    image_column: str = "image",
    caption_column: str = "caption",
    split: str = "train",
) -> list[SourceRecord]:
    """All records of META, in order; raises :class:`MetaError` naming the problem."""
    path = Path(meta).expanduser()
    if not path.exists():
        raise MetaError(f"META {str(path)!r} does not exist; pass a JSON/JSONL file, a datasets folder or a picture folder with --images")
    if path.is_dir() and not _is_dataset_folder(path):
        records = _picture_folder_records(path, image_column, caption_column)
    elif path.is_dir():
        records = _dataset_records(path, image_column, caption_column, split)
    else:
        records = [_record(row, i, path, image_column, caption_column) for i, row in enumerate(_file_rows(path))]
        for r in records:
            if r.problem:
                continue
            if not isinstance(r.image, str):
                r.problem = f"image must be a path string, got {type(r.image).__name__}"
                continue
            r.image = r.source = str(path.parent / r.image)  # relative paths are relative to META's folder
    if not records:
        raise MetaError(f"META {str(path)!r} has no rows")
    _check_unique_ids(records, path)
    return records


def _picture_folder_records(folder: Path, image_column: str, caption_column: str) -> list[SourceRecord]:
    """A plain folder of pictures. Captions come from ``metadata.jsonl`` in the folder (Hugging Face's
    imagefolder convention: a ``file_name`` column) or else from a ``<picture stem>.txt`` beside each picture."""
    sidecar = folder / "metadata.jsonl"
    if sidecar.is_file():
        rows = _file_rows(sidecar)
        for row in rows:
            if image_column not in row and "file_name" in row:
                row[image_column] = row.pop("file_name")
        records = [_record(row, i, sidecar, image_column, caption_column) for i, row in enumerate(rows)]
        for r in records:
            if not r.problem:
                r.image = r.source = str(folder / r.image)
        return records
    pictures = sorted(p for p in folder.rglob("*") if p.suffix.lower() in PICTURE_SUFFIXES and p.is_file())
    if not pictures:
        raise MetaError(f"folder {str(folder)!r} holds no pictures ({', '.join(PICTURE_SUFFIXES)}) and no metadata.jsonl")
    records = []
    for picture in pictures:
        caption_file = picture.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else ""
        name = str(picture.relative_to(folder))
        record = _record({image_column: str(picture), caption_column: caption, "id": name}, 0, folder, image_column, caption_column)
        record.source = str(picture)
        if record.problem.startswith("no caption"):
            record.problem = f"no caption: {caption_file.name} beside it is missing or empty"
        records.append(record)
    return records


def _file_rows(path: Path) -> list[dict]:
    try:
        return read_rows(path, what="META")
    except RecordsError as err:
        raise MetaError(str(err)) from None


def _record(row: dict, index: int, meta: Path, image_column: str, caption_column: str, default_id: str = "") -> SourceRecord:
    """A record for one META row; a row without an image or caption gets a ``problem`` (it is skipped, not fatal)."""
    captions = {"caption": row.get(caption_column), "short_caption": row.get("short_caption"), "long_caption": row.get("long_caption")}
    captions = {k: ("" if v is None else str(v)) for k, v in captions.items()}
    image = row.get(image_column)
    problem = ""
    if image in (None, ""):
        problem = f"no {image_column!r} field (set --image_column)"
    elif not any(captions.values()):
        problem = f"no caption (none of {caption_column!r}, 'short_caption', 'long_caption'; set --caption_column)"
    known = {image_column, caption_column, "id", *CAPTION_FIELDS}
    default_id = default_id or (image if isinstance(image, str) and image else f"row-{index}")
    return SourceRecord(
        id=str(row.get("id", default_id)),
        image=image,
        source=f"{meta}#{index}",
        caption=captions["caption"] or captions["long_caption"] or captions["short_caption"],
        short_caption=captions["short_caption"],
        long_caption=captions["long_caption"],
        meta={k: v for k, v in row.items() if k not in known},
        problem=problem,
    )


def _load_dataset_image(dataset: Any, column: str, index: int) -> Any:
    return dataset[index][column]


def _dataset_records(path: Path, image_column: str, caption_column: str, split: str) -> list[SourceRecord]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise MetaError(f"datasets folder {str(path)!r} has splits {sorted(ds)}, not {split!r}; set --split")
        ds = ds[split]
    if image_column not in ds.column_names:
        raise MetaError(
            f"datasets folder {str(path)!r} has no column {image_column!r} (columns: {ds.column_names}); set --image_column"
        )
    # Read every column but the pictures now; pictures are decoded one by one when encoded.
    text_rows = ds.remove_columns([image_column]).to_list()
    images = ds.select_columns([image_column])
    records = []
    for i, row in enumerate(text_rows):
        row = {**row, image_column: functools.partial(_load_dataset_image, images, image_column, i)}
        records.append(_record(row, i, path, image_column, caption_column, default_id=str(i)))
    return records


def _check_unique_ids(records: list[SourceRecord], meta: Path) -> None:
    seen: set[str] = set()
    for r in records:
        if r.id in seen:
            raise MetaError(f"META {str(meta)!r} lists id {r.id!r} twice; ids (or image paths) must be unique")
        seen.add(r.id)
