"""Token extraction: cache contents, skipped pictures, resume, atomic publication, META formats."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from policies.codecs import PaletteCodec
from pretrain_sft.cache import (
    INFO_FILE,
    SKIPPED_FILE,
    CacheError,
    CacheInfo,
    load_cache,
    publish_cache,
    read_cache_info,
)
from pretrain_sft.demo_data import write_image_folder
from pretrain_sft.extract import (
    ExtractArguments,
    encode_records,
    extract,
    main,
    merge_into_cache,
)
from pretrain_sft.images import prepare_image
from pretrain_sft.shards import WorkArea, shard
from pretrain_sft.sources import MetaError, read_records

REPO = Path(__file__).resolve().parents[1]


def _args(meta, out, **kw) -> ExtractArguments:
    return ExtractArguments(images=str(meta), out=str(out), resolution=64, batch_size=8, **kw)


def _codes_of(path: Path) -> list[int]:
    return PaletteCodec().encode(prepare_image(path, 64)[None])[0].flatten().tolist()


def _repaint(path: Path, rgb=(255, 0, 0)) -> None:
    Image.new("RGB", (64, 64), rgb).save(path)


@pytest.fixture
def demo(tmp_path) -> Path:
    return write_image_folder(tmp_path / "demo", num_images=24, seed=3)


def test_cache_holds_codes_that_decode_back_to_each_picture_with_captions_and_metadata(demo, tmp_path):
    out = extract(_args(demo, tmp_path / "cache"))
    rows, info = load_cache(out)
    assert (info.codec, info.codebook_size, info.downsample, info.resolution, info.grid) == ("palette", 64, 8, 64, (8, 8))
    assert len(rows) == 24
    meta_rows = {json.loads(line)["image"]: json.loads(line) for line in demo.read_text().splitlines()}
    codec = PaletteCodec()
    for row in rows.select(range(5)):
        source = meta_rows[row["id"]]
        assert row["caption"] == source["caption"] and row["short_caption"] == source["short_caption"]
        assert json.loads(row["meta"]) == {"background": source["background"], "objects": source["objects"]}
        decoded = codec.decode(torch.tensor(row["codes"]).view(1, 8, 8))[0]
        assert torch.equal(decoded, prepare_image(demo.parent / row["id"], 64))
    assert not list(tmp_path.glob(".cache.*")) and not (tmp_path / "cache.partial").exists()


def test_corrupt_missing_too_small_and_captionless_rows_are_skipped_with_reasons(demo, tmp_path):
    images = demo.parent / "images"
    (images / "000001.png").write_bytes(b"not a png")
    (images / "000002.png").unlink()
    Image.new("RGB", (40, 80), (0, 0, 255)).save(images / "000003.png")
    png = (images / "000004.png").read_bytes()
    (images / "000004.png").write_bytes(png[: len(png) // 2])  # truncated file
    rows = [json.loads(line) for line in demo.read_text().splitlines()]
    rows[5] = {"image": rows[5]["image"]}  # no caption at all
    demo.write_text("".join(json.dumps(r) + "\n" for r in rows))

    out = extract(_args(demo, tmp_path / "cache"))
    rows, _ = load_cache(out)
    skipped = {r["id"]: r["reason"] for r in map(json.loads, (out / SKIPPED_FILE).read_text().splitlines())}
    assert len(rows) == 24 - 5
    assert skipped["images/000001.png"].startswith("unreadable image")
    assert skipped["images/000002.png"].startswith("missing file")
    assert skipped["images/000003.png"].startswith("too small: 40x80")
    assert skipped["images/000004.png"].startswith("unreadable image")
    assert skipped["images/000005.png"].startswith("no caption")
    assert not set(skipped) & set(rows["id"])


def test_rerun_encodes_only_missing_ids_and_keeps_earlier_rows(demo, tmp_path):
    out = tmp_path / "cache"
    all_rows = demo.read_text().splitlines()
    demo.write_text("\n".join(all_rows[:10]) + "\n")
    extract(_args(demo, out))
    before = {r["id"]: r["codes"] for r in load_cache(out)[0]}
    first = demo.parent / "images/000000.png"
    _repaint(first)  # re-encoding it would change its codes
    demo.write_text("\n".join(all_rows) + "\n")

    extract(_args(demo, out))
    after = {r["id"]: r["codes"] for r in load_cache(out)[0]}
    assert len(after) == 24
    assert all(after[i] == codes for i, codes in before.items())
    assert after["images/000000.png"] != _codes_of(first)


def test_interrupted_run_resumes_from_its_complete_parts(demo, tmp_path):
    out = tmp_path / "cache"
    args = _args(demo, out, rows_per_part=4)
    records = read_records(demo)
    area = WorkArea(out)
    area.prepare(CacheInfo("palette", 64, 8, 64, (8, 8)))
    writer = area.writer(rank=0, rows_per_part=4)
    encode_records(records[:8], PaletteCodec(), args, writer, torch.device("cpu"), progress=False)
    writer.close()  # ... and the process dies before merging
    for r in records[:8]:
        _repaint(Path(r.image))

    extract(args)
    rows = {r["id"]: r["codes"] for r in load_cache(out)[0]}
    assert len(rows) == 24
    assert all(rows[r.id] != _codes_of(Path(r.image)) for r in records[:8])  # taken from the parts, not re-encoded
    assert not area.root.exists()


def test_ranks_encode_disjoint_shards_that_merge_into_one_cache(demo, tmp_path):
    out = tmp_path / "cache"
    args = _args(demo, out)
    records = read_records(demo)
    shards = [shard(records, rank, 3) for rank in range(3)]
    assert sorted(r.id for s in shards for r in s) == sorted(r.id for r in records)
    assert not set(r.id for r in shards[0]) & set(r.id for r in shards[1])

    area = WorkArea(out)
    info = read_cache_info(extract(_args(demo, tmp_path / "reference")))
    area.prepare(info)
    for rank, mine in enumerate(shards):
        writer = area.writer(rank, rows_per_part=5)
        encode_records(mine, PaletteCodec(), args, writer, torch.device("cpu"), progress=False)
        writer.close()
    assert merge_into_cache(out, area, info) == (24, 0)
    merged = {r["id"]: r["codes"] for r in load_cache(out)[0]}
    reference = {r["id"]: r["codes"] for r in load_cache(tmp_path / "reference")[0]}
    assert merged == reference


def test_rerun_with_other_resolution_is_refused_naming_both_settings(demo, tmp_path):
    out = extract(_args(demo, tmp_path / "cache"))
    with pytest.raises(CacheError, match=r"resolution 64 \(grid 8x8\).*resolution 32 \(grid 4x4\)"):
        extract(ExtractArguments(images=str(demo), out=str(out), resolution=32))


def test_out_folder_that_is_not_a_cache_is_never_replaced(demo, tmp_path):
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"...")
    with pytest.raises(CacheError, match="is not a token cache"):
        extract(_args(demo, precious))
    assert (precious / "holiday.jpg").exists()


def test_failed_publication_leaves_the_old_cache_intact(demo, tmp_path):
    out = extract(_args(demo, tmp_path / "cache"))
    rows, info = load_cache(out)
    with pytest.raises(TypeError):
        publish_cache(rows.select(range(3)), info, out, skipped=[{"id": "x", "reason": {1, 2}}])  # not JSON
    assert len(load_cache(out)[0]) == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "demo"]


def test_no_encodable_picture_writes_no_cache_and_names_the_report(tmp_path):
    meta = tmp_path / "meta.jsonl"
    meta.write_text(json.dumps({"image": "absent.png", "caption": "a red square"}) + "\n")
    with pytest.raises(CacheError, match="no picture could be encoded.*skipped.jsonl"):
        extract(_args(meta, tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_json_list_meta_and_datasets_folder_meta_give_the_same_codes(tmp_path):
    pictures = [Image.fromarray(np.full((64, 96, 3), c, np.uint8)) for c in ((255, 0, 0), (0, 85, 170))]
    for i, p in enumerate(pictures):
        p.save(tmp_path / f"p{i}.png")
    listing = [{"image": f"p{i}.png", "caption": f"Picture {i}. More words.", "tag": i} for i in range(2)]
    (tmp_path / "meta.json").write_text(json.dumps(listing))
    ds = datasets.Dataset.from_dict(
        {"picture": pictures, "text": ["Picture 0. More words.", "Picture 1. More words."]},
        features=datasets.Features({"picture": datasets.Image(), "text": datasets.Value("string")}),
    )
    ds.save_to_disk(str(tmp_path / "hf"))

    from_json = load_cache(extract(_args(tmp_path / "meta.json", tmp_path / "c1")))[0]
    from_hf = load_cache(extract(_args(tmp_path / "hf", tmp_path / "c2", image_column="picture", caption_column="text")))[0]
    assert from_json["codes"] == from_hf["codes"]
    assert from_hf["id"] == ["0", "1"] and from_hf["caption"] == from_json["caption"]
    assert [json.loads(m) for m in from_json["meta"]] == [{"tag": 0}, {"tag": 1}]


def test_unreadable_meta_is_an_error_naming_file_and_line(tmp_path):
    bad = tmp_path / "meta.jsonl"
    bad.write_text('{"image": "a.png", "caption": "x"}\n{oops\n')
    with pytest.raises(MetaError, match="line 2 of META"):
        read_records(bad)
    with pytest.raises(MetaError, match="does not exist"):
        read_records(tmp_path / "absent.jsonl")


def test_cli_rejects_unknown_option_by_name(demo, tmp_path, capsys):
    assert main(["--images", str(demo), "--out", str(tmp_path / "c"), "--resolution", "64", "--colour_space", "rgb"]) == 2
    assert "unknown key `colour_space`" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_accelerate_launch_encodes_each_picture_once(demo, tmp_path):
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "pretrain_sft.extract", "--images", str(demo), "--out", str(out), "--resolution", "64"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("to encode") == 1  # one main process, not two independent runs
    assert len(load_cache(out)[0]) == 24
    assert (out / INFO_FILE).exists()


def test_plain_picture_folder_with_txt_captions_encodes_and_skips_the_uncaptioned(tmp_path):
    folder = tmp_path / "pictures"
    (folder / "sub").mkdir(parents=True)
    for name, rgb in (("a.png", (255, 0, 0)), ("sub/b.jpg", (0, 0, 255)), ("c.png", (0, 255, 0))):
        Image.new("RGB", (64, 64), rgb).save(folder / name)
    (folder / "a.txt").write_text("a red square\n")
    (folder / "sub" / "b.txt").write_text("a blue square")
    cache = tmp_path / "cache"
    assert main(["--images", str(folder), "--out", str(cache), "--resolution", "64", "--codec", "palette"]) == 0
    rows = load_cache(cache)[0]
    assert sorted(zip(rows["id"], rows["caption"])) == [("a.png", "a red square"), ("sub/b.jpg", "a blue square")]
    assert rows["codes"][rows["id"].index("a.png")] == _codes_of(folder / "a.png")
    skipped = [json.loads(line) for line in (cache / SKIPPED_FILE).read_text().splitlines()]
    assert [s["id"] for s in skipped] == ["c.png"] and "c.txt" in skipped[0]["reason"]


def test_picture_folder_with_imagefolder_metadata_jsonl_reads_file_name_column(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    Image.new("RGB", (64, 64), (255, 0, 0)).save(folder / "x.png")
    (folder / "metadata.jsonl").write_text(json.dumps({"file_name": "x.png", "caption": "a red square", "tag": 1}) + "\n")
    (record,) = read_records(folder)
    assert (record.image, record.caption, record.meta) == (str(folder / "x.png"), "a red square", {"tag": 1})
