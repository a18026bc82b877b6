"""``simplear-rl extract-tokens``: encode pictures + captions into a token cache.

    simplear-rl extract-tokens --images META --codec palette --resolution 64 --out CACHE
    accelerate launch --num_processes 8 -m pretrain_sft.extract --images META --codec cosmos \\
        --codec_path /models/Cosmos-1.0-Tokenizer-DV8x16x16 --resolution 512 --out CACHE

Every process encodes a disjoint share of the pictures not yet in CACHE into ``CACHE.partial``;
after a barrier the main process merges the old cache and the new parts into a new cache folder
and swaps it in (see :mod:`pretrain_sft.cache`). Bad pictures are skipped and listed with the
reason in ``CACHE/skipped.jsonl``; a re-run only encodes what is missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from policies.commands import command
from policies.records import write_jsonl

from .cache import (
    INFO_FILE,
    SKIPPED_FILE,
    CacheError,
    CacheInfo,
    cached_ids,
    check_replaceable,
    load_cache,
    merge_parts,
    publish_cache,
    quiet_datasets,
    read_cache_info,
)
from .images import SkipImage, prepare_image
from .shards import WorkArea, shard
from .sources import SourceRecord, read_records

logger = logging.getLogger(__name__)


@dataclass
class ExtractArguments:
    """Options of ``extract-tokens`` (also settable from a YAML file with ``--config``)."""

    images: str = field(metadata={"help": "META: a JSON/JSONL file, a datasets folder with an image column, or a "
                                         "folder of pictures with captions in <stem>.txt beside them (or its metadata.jsonl)"})
    out: str = field(metadata={"help": "the cache folder to write (or to complete, if it exists)"})
    resolution: int = field(metadata={"help": "square side in pixels after centre-crop and resize (e.g. 512, 1024)"})
    codec: str = field(default="palette", metadata={"help": "codec name: palette or cosmos"})
    codec_path: str | None = field(default=None, metadata={"help": "local codec folder (cosmos)"})
    codec_kwargs: dict | str | None = field(
        default=None, metadata={"help": 'codec constructor options as JSON, e.g. \'{"levels": 4, "patch": 8}\''}
    )
    min_size: int | None = field(
        default=None, metadata={"help": "skip pictures whose shorter side is below this (default: resolution)"}
    )
    batch_size: int = field(default=32, metadata={"help": "pictures per codec call"})
    num_workers: int = field(default=0, metadata={"help": "data-loader processes decoding pictures"})
    rows_per_part: int = field(default=4096, metadata={"help": "rows per part written while encoding (resume granularity)"})
    image_column: str = field(default="image", metadata={"help": "column (JSONL key) holding the picture path or picture"})
    caption_column: str = field(default="caption", metadata={"help": "column (JSONL key) holding the caption"})
    split: str = field(default="train", metadata={"help": "split of a DatasetDict folder"})
    device: str | None = field(default=None, metadata={"help": "codec device (default: this process's accelerator)"})
    dtype: str | None = field(default=None, metadata={"help": "codec dtype (default: bf16 on CUDA, fp32 on CPU)"})

    def __post_init__(self) -> None:
        if isinstance(self.codec_kwargs, str):
            try:
                self.codec_kwargs = json.loads(self.codec_kwargs)
            except json.JSONDecodeError as exc:
                raise ValueError(f"--codec_kwargs must be a JSON object, got {self.codec_kwargs!r} ({exc})") from exc
        self.codec_kwargs = dict(self.codec_kwargs or {})
        if self.resolution <= 0:
            raise ValueError(f"--resolution must be positive, got {self.resolution}")
        if self.batch_size < 1:
            raise ValueError(f"--batch_size must be >= 1, got {self.batch_size}")


class _Pictures(Dataset):
    """Records prepared for the codec; a bad picture yields its skip reason instead of pixels."""

    def __init__(self, records: list[SourceRecord], resolution: int, min_size: int | None):
        self.records, self.resolution, self.min_size = records, resolution, min_size

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str]:
        record = self.records[i]
        if record.problem:
            return i, None, record.problem
        try:
            return i, prepare_image(record.image, self.resolution, self.min_size), ""
        except SkipImage as exc:
            return i, None, str(exc)


def _as_list(batch: list) -> list:
    return batch


def encode_records(
    records: list[SourceRecord], codec: Any, args: ExtractArguments, writer, device: torch.device, progress: bool
) -> None:
    """Encode ``records`` in batches, handing rows and skips to ``writer`` (a :class:`ShardWriter`)."""
    grid = codec.grid_for(args.resolution)
    loader = DataLoader(
        _Pictures(records, args.resolution, args.min_size),
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        collate_fn=_as_list,
    )
    with tqdm(total=len(records), desc="encoding pictures", unit="img", disable=not progress) as bar:
        for batch in loader:
            good = [(records[i], px) for i, px, _ in batch if px is not None]
            for i, _, reason in batch:
                if reason:
                    writer.skip(records[i].id, records[i].source, reason)
            if good:
                with torch.no_grad():
                    codes = codec.encode(torch.stack([px for _, px in good]).to(device))
                if tuple(codes.shape[1:]) != grid:
                    raise RuntimeError(f"codec returned grids of {tuple(codes.shape[1:])}, expected {grid}")
                for (record, _), row_codes in zip(good, codes.flatten(1).cpu().tolist()):
                    writer.add({
                        "id": record.id,
                        "source": record.source,
                        "caption": record.caption,
                        "short_caption": record.short_caption,
                        "long_caption": record.long_caption,
                        "codes": row_codes,
                        "meta": record.meta,
                    })
            bar.update(len(batch))


def _final_skips(skipped: list[dict], encoded: set[str]) -> list[dict]:
    """The last skip per id, leaving out ids that ended up encoded (e.g. fixed before a re-run)."""
    last = {row["id"]: row for row in skipped}
    return [row for row_id, row in last.items() if row_id not in encoded]


def merge_into_cache(out: Path, area: WorkArea, info: CacheInfo) -> tuple[int, int]:
    """Publish old cache + new parts as the new cache; returns ``(rows, skipped)``."""
    parts = area.parts()
    old = [load_cache(out)[0]] if (out / INFO_FILE).exists() and parts else []
    if not parts and (out / INFO_FILE).exists():  # nothing new was encoded: refresh only the report, atomically
        encoded = cached_ids(out)
        skipped = _final_skips(area.skipped(), encoded)
        write_jsonl(out / SKIPPED_FILE, skipped)
        return len(encoded), len(skipped)
    merged = merge_parts(old + parts)
    skipped = _final_skips(area.skipped(), set(merged["id"]))
    if len(merged) == 0:
        report = area.root / "skipped.jsonl"
        write_jsonl(report, skipped)
        raise CacheError(f"no picture could be encoded, so no cache was written; the reasons are in {report}")
    publish_cache(merged, info, out, skipped)
    return len(merged), len(skipped)


def extract(args: ExtractArguments) -> Path:
    """Run extraction in this process (one rank of many under ``accelerate launch``); returns the cache path."""
    with quiet_datasets():
        return _extract(args)


def _extract(args: ExtractArguments) -> Path:
    from accelerate import PartialState

    from policies.codecs import build_codec_for

    # Without CUDA (or with --device cpu) ranks talk over gloo: accelerate only does that when asked for CPU.
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    out = Path(args.out).expanduser().resolve()
    records = read_records(args.images, args.image_column, args.caption_column, args.split)
    device = torch.device(args.device) if args.device else state.device
    codec = build_codec_for(args.codec, args.codec_path, device=device, dtype=args.dtype, **args.codec_kwargs)
    info = CacheInfo(
        codec=args.codec,
        codec_kwargs=args.codec_kwargs,
        codebook_size=int(codec.codebook_size),
        downsample=int(codec.downsample),
        resolution=args.resolution,
        grid=codec.grid_for(args.resolution),
    )
    check_replaceable(out)
    if (out / INFO_FILE).exists():
        existing = read_cache_info(out)
        if not existing.same_encoding(info):
            raise CacheError(
                f"cache {out} holds {existing.describe()}, but this run asks for {info.describe()}; "
                "use another --out or the cache's settings"
            )
    area = WorkArea(out)
    if state.is_main_process:
        area.prepare(info)
    state.wait_for_everyone()
    done = cached_ids(out) | area.done_ids()
    todo = [r for r in records if r.id not in done]
    state.wait_for_everyone()  # every rank has listed the done parts before any rank adds new ones
    mine = shard(todo, state.process_index, state.num_processes)
    if state.is_main_process:
        print(f"{len(records)} pictures in META, {len(done)} already encoded, {len(todo)} to encode")
    writer = area.writer(state.process_index, args.rows_per_part)
    try:
        encode_records(mine, codec, args, writer, device, progress=state.is_main_process)
    finally:
        writer.close()
    state.wait_for_everyone()
    if state.is_main_process:
        rows, skipped = merge_into_cache(out, area, info)
        area.remove()
        print(f"cache {out}: {rows} rows ({info.describe()}); {skipped} skipped, listed in {out / SKIPPED_FILE}")
    return out


@command("extract-tokens")
def main(argv: list[str]) -> int:
    """Entry point of ``simplear-rl extract-tokens`` and ``python -m pretrain_sft.extract``."""
    from policies.recipes import RecipeParser

    (args,) = RecipeParser(ExtractArguments, command="extract-tokens").parse_args_and_config(argv)
    extract(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
