"""Run folders of pretrain/SFT and the rules every trainer shares (pretrain_sft.checkpoints): resume
from the newest COMPLETE checkpoint, metrics.jsonl, and a second run never overwriting the first."""

import json
import logging
import shutil
from pathlib import Path

import pytest
from run_folder_helpers import cut_off, tree_hashes

from pretrain_sft.checkpoints import check_output_dir, earlier_run, has_checkpoint, resolve_resume
from pretrain_sft.demo_data import write_image_folder
from pretrain_sft.extract import ExtractArguments, extract
from pretrain_sft.train import cpu_threads, main_pretrain
from rl.curves import read_metrics

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = str(REPO / "recipes/tiny/pretrain.yaml")


def fake_checkpoint(folder: Path, complete: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    if complete:
        (folder / "trainer_state.json").write_text("{}")
    return folder


# --------------------------------------------------------------------- the shared rules, without training
def test_last_is_the_newest_complete_checkpoint_and_newer_incomplete_ones_are_logged_and_left_untouched(
    tmp_path, caplog
):
    fake_checkpoint(tmp_path / "checkpoint-2", complete=True)
    fake_checkpoint(tmp_path / "checkpoint-10", complete=True)
    fake_checkpoint(tmp_path / "checkpoint-12", complete=False)  # every file but trainer_state.json
    (tmp_path / "checkpoint-14").mkdir()  # empty
    before = tree_hashes(tmp_path)
    with caplog.at_level(logging.WARNING):
        for value in ("last", "true", True):
            assert resolve_resume(value, tmp_path) == str(tmp_path / "checkpoint-10")
    skip = caplog.records[-1].getMessage()
    assert "checkpoint-12" in skip and "checkpoint-14" in skip and "not deleted" in skip
    assert tree_hashes(tmp_path) == before and (tmp_path / "checkpoint-14").is_dir()
    assert has_checkpoint(tmp_path)


def test_resume_last_with_only_incomplete_checkpoints_fails_naming_them(tmp_path):
    fake_checkpoint(tmp_path / "checkpoint-4", complete=False)
    (tmp_path / "checkpoint-6").mkdir()
    assert not has_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="incomplete .checkpoint-4, checkpoint-6.*--overwrite_output_dir true"):
        resolve_resume("last", tmp_path)
    assert (tmp_path / "checkpoint-6").is_dir()


def test_an_incomplete_checkpoint_named_by_path_is_refused(tmp_path):
    partial = fake_checkpoint(tmp_path / "checkpoint-4", complete=False)
    with pytest.raises(FileNotFoundError, match="incomplete checkpoint"):
        resolve_resume(str(partial), tmp_path)


def test_an_empty_folder_or_one_holding_only_init_policy_is_not_an_earlier_run(tmp_path):
    assert earlier_run(tmp_path / "missing") == [] and earlier_run(tmp_path) == []
    (tmp_path / "init-policy").mkdir()
    (tmp_path / "init-policy" / "config.json").write_text("{}")
    assert earlier_run(tmp_path) == []
    check_output_dir(tmp_path, resume=None)  # no error
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n')
    assert earlier_run(tmp_path) == ["metrics.jsonl"]
    with pytest.raises(FileExistsError, match="metrics.jsonl"):
        check_output_dir(tmp_path, resume=None)


def test_overwriting_the_folder_a_run_resumes_from_is_refused(tmp_path):
    checkpoint = fake_checkpoint(tmp_path / "checkpoint-2", complete=True)
    with pytest.raises(ValueError, match="choose one"):
        check_output_dir(tmp_path, resume=str(checkpoint), overwrite=True)
    assert checkpoint.is_dir()


# --------------------------------------------------------------------- tiny pretraining runs
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with cpu_threads(1):
        yield


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("pretrain_runs")
    meta = write_image_folder(workdir / "images", num_images=32, seed=0)
    return extract(ExtractArguments(images=str(meta), out=str(workdir / "cache"), resolution=64))


def pretrain_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return ["--config", PRETRAIN, "--cache", str(cache), "--output_dir", str(out), "--logging_steps", "1",
            "--save_steps", "2", *extra]


@pytest.fixture(scope="module")
def first_run(cache, tmp_path_factory) -> Path:
    """Four pretraining steps, a checkpoint every two, a log every step."""
    out = tmp_path_factory.mktemp("pretrain") / "run"
    assert main_pretrain(pretrain_args(cache, out, "--max_steps", "4")) == 0
    return out


def test_pretrain_writes_metrics_jsonl_with_the_loss_of_every_logged_step(first_run):
    records = read_metrics(first_run)
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(isinstance(r["loss"], float) and isinstance(r["loss_visual"], float) for r in records)
    assert json.loads((first_run / "train_summary.json").read_text())["step"] == 4


@pytest.mark.parametrize("partial", ["empty", "all_but_trainer_state"])
def test_pretrain_resume_last_skips_a_checkpoint_cut_off_mid_save_logs_it_and_logs_every_step_once(
    cache, first_run, tmp_path, caplog, partial
):
    run = shutil.copytree(first_run, tmp_path / "run")
    cut_off(run / "checkpoint-4", partial)  # killed while saving checkpoint-4, after steps 3 and 4 were logged
    with caplog.at_level(logging.WARNING):
        assert main_pretrain(pretrain_args(cache, run, "--max_steps", "4", "--resume_from_checkpoint", "last")) == 0
    skips = [r.getMessage() for r in caplog.records if "skipping incomplete checkpoint" in r.getMessage()]
    assert len(skips) == 1 and str(run / "checkpoint-4") in skips[0] and str(run / "checkpoint-2") in skips[0]
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4]  # 3 and 4 redone from checkpoint-2, once each
    assert [json.loads(line)["step"] for line in (run / "metrics.discarded.jsonl").read_text().splitlines()] == [3, 4]
    # Never deleted: the resumed run redid step 4 and saved checkpoint-4 into it again, complete this time.
    assert json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert json.loads((run / "simplear_training.json").read_text())["global_step"] == 4


def test_a_second_pretrain_run_into_the_same_output_dir_is_refused_and_changes_no_file(
    cache, first_run, tmp_path, capsys
):
    run = shutil.copytree(first_run, tmp_path / "run")
    before = tree_hashes(run)
    assert main_pretrain(pretrain_args(cache, run, "--max_steps", "2")) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("simplear-rl pretrain: error:")]
    assert str(run) in line and "--resume_from_checkpoint last" in line and "--overwrite_output_dir true" in line
    assert "Traceback" not in err
    assert tree_hashes(run) == before


def test_pretrain_overwrite_output_dir_moves_the_earlier_run_aside_and_starts_afresh(
    cache, first_run, tmp_path, caplog
):
    run = shutil.copytree(first_run, tmp_path / "run")
    before = tree_hashes(run)
    with caplog.at_level(logging.WARNING):
        assert main_pretrain(pretrain_args(cache, run, "--max_steps", "2", "--overwrite_output_dir", "true")) == 0
    (aside,) = tmp_path.glob("run.overwritten-*")
    assert tree_hashes(aside) == before  # nothing of the first run lost ...
    assert [r["step"] for r in read_metrics(run)] == [1, 2]  # ... and nothing of it merged into the new run
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2"]
    assert json.loads((run / "simplear_training.json").read_text())["global_step"] == 2
    assert any("moved the earlier run" in r.getMessage() and str(aside) in r.getMessage() for r in caplog.records)
