"""Prompt sets: file formats, short/long/mix caption selection and their errors."""

import json

import datasets
import pytest

from rl.data import load_prompt_set

ROWS = [
    {"prompt": f"a red square {i}", "long_prompt": f"A picture with a red square number {i}.", "objects": [{"color": "red"}]}
    for i in range(40)
]


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_short_prompts_are_the_prompt_column_and_metadata_is_kept(tmp_path):
    ds = load_prompt_set(write_jsonl(tmp_path / "p.jsonl", ROWS), "short")
    assert ds[3]["prompt"] == "a red square 3"
    assert ds[3]["long_prompt"] == "A picture with a red square number 3."
    assert ds[3]["objects"] == [{"color": "red"}]


def test_long_prompts_use_the_long_caption(tmp_path):
    ds = load_prompt_set(write_jsonl(tmp_path / "p.jsonl", ROWS), "long")
    assert ds["prompt"] == [r["long_prompt"] for r in ROWS]


def test_mix_draws_both_kinds_reproducibly_with_the_seed(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    first = load_prompt_set(path, "mix", seed=3)["prompt"]
    assert first == load_prompt_set(path, "mix", seed=3)["prompt"]
    n_long = sum(p.startswith("A picture") for p in first)
    assert 5 < n_long < 35


def test_json_txt_and_datasets_folder_formats_load(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps(ROWS[:5]))
    assert len(load_prompt_set(tmp_path / "p.json")) == 5
    (tmp_path / "p.txt").write_text("a cat\n\na dog\n")
    assert load_prompt_set(tmp_path / "p.txt")["prompt"] == ["a cat", "a dog"]
    datasets.Dataset.from_list(ROWS[:7]).save_to_disk(str(tmp_path / "folder"))
    assert len(load_prompt_set(tmp_path / "folder", "long")) == 7


def test_long_selection_without_long_captions_names_the_column_and_the_fix(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a cat"}])
    with pytest.raises(ValueError, match="long_prompt.*prompt_length: short"):
        load_prompt_set(path, "long")


def test_unreadable_prompt_files_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2 of prompt file .*bad.jsonl"):
        load_prompt_set(bad)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_prompt_set(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="no 'prompt' column"):
        load_prompt_set(write_jsonl(tmp_path / "q.jsonl", [{"caption": "x"}]))
    with pytest.raises(ValueError, match="empty"):
        load_prompt_set(write_jsonl(tmp_path / "e.jsonl", [{"prompt": "x"}]), limit=0)
    (tmp_path / "p.csv").write_text("prompt\nx\n")
    with pytest.raises(ValueError, match="unsupported extension"):
        load_prompt_set(tmp_path / "p.csv")


def test_geneval_metadata_loads_with_columns_only_later_rows_have_and_mixed_type_lists(tmp_path):
    """GenEval's evaluation_metadata.jsonl: `exclude` only on counting rows, `position` = ["left of", 0]."""
    rows = [
        {"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"},
        {"tag": "counting", "include": [{"class": "cat", "count": 2}], "exclude": [{"class": "cat", "count": 3}],
         "prompt": "a photo of two cats"},
        {"tag": "position", "include": [{"class": "dog", "count": 1}, {"class": "cup", "count": 1,
                                                                        "position": ["left of", 0]}],
         "prompt": "a photo of a cup left of a dog"},
    ]
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    table = load_prompt_set(path)
    assert table["exclude"][0] is None and table["exclude"][1] == [{"class": "cat", "count": 3}]
    # Arrow cannot type text and a number in one list: the column is kept as JSON text, exactly recoverable.
    assert [json.loads(v) for v in table["include"]] == [r["include"] for r in rows]

    from rewards.geneval_rules import parse_row  # the geneval reward reads the JSON text as it is

    spec = parse_row(table["tag"][2], table["include"][2], table["exclude"][2])
    assert spec.include[1].position == ("left of", 0)
