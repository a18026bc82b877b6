"""``simplear-rl pretrain`` / ``simplear-rl sft``: one training path, two kinds of recipe.

    simplear-rl pretrain --config recipes/tiny/pretrain.yaml --cache CACHE --output_dir RUN
    simplear-rl sft --config recipes/tiny/sft.yaml --model_name_or_path RUN --cache CACHE --output_dir RUN2
    accelerate launch --config_file recipes/accelerate/zero2.yaml -m pretrain_sft.train \\
        --config recipes/simplear_0.5b/sft_1024.yaml       # the recipe's `stage` says which

Pretraining and SFT differ only in recipe values (resolution, learning rate, caption mode). The
run folder ends up holding ``checkpoint-N/`` folders (resumable with ``--resume_from_checkpoint
last``) and the final policy, loadable with :func:`policies.load_policy` and with plain
``AutoModelForCausalLM``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from policies.commands import command
from policies.recipes import RecipeParser
from policies.records import write_json

from .cache import (
    CacheError,
    CacheInfo,
    check_cache_resolution,
    load_cache,
    read_cache_info,
)
from .checkpoints import prepare_output_dir
from .config import STAGES, PolicyArguments, StageArguments, StageTrainingArguments
from .policy_init import check_start_path, init_policy
from .sequences import SequenceBuilder, TokenSequenceDataset, collate_left_padded
from .trainer import EpochSetter, VisualLMTrainer

logger = logging.getLogger(__name__)
RUN_INFO_FILE = "simplear_training.json"
_TEXT_COLUMNS = ("id", "caption", "short_caption", "long_caption", "codes")


def parse_args(
    argv: list[str] | None, stage: str | None = None
) -> tuple[StageArguments, PolicyArguments, StageTrainingArguments]:
    """Parse a recipe (``--config``) and command-line overrides; ``stage`` is the entry point's stage."""
    parser = RecipeParser((StageArguments, PolicyArguments, StageTrainingArguments), command=stage or "pretrain")
    stage_args, policy_args, training_args = parser.parse_args_and_config(argv)
    if stage_args.stage is None:
        if stage is None:
            raise ValueError(f"set `stage` ({' or '.join(STAGES)}) in the recipe or with --stage")
        stage_args.stage = stage
    elif stage is not None and stage_args.stage != stage:
        raise ValueError(
            f"the recipe says stage: {stage_args.stage} but this is `simplear-rl {stage}`; "
            f"run `simplear-rl {stage_args.stage}` or fix the recipe's stage"
        )
    return stage_args, policy_args, training_args


def save_final_model(trainer: VisualLMTrainer, output_dir: str) -> None:
    """Save the final policy into ``output_dir`` without leaving a half-written model.

    Everything is written to a temporary sub-folder first and then moved in file by file,
    ``config.json`` last: until then the folder does not look like a (new) model.
    """
    out = Path(output_dir)
    tmp = out / ".final-tmp"
    trainer.save_model(str(tmp))
    if trainer.is_world_process_zero():
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n != "config.json"] + ["config.json"]:
            os.replace(tmp / name, out / name)
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()


@contextmanager
def cpu_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op CPU threads (unchanged when ``None``), then restore the old count."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_before_loading(
    stage_args: StageArguments, policy_args: PolicyArguments, training_args: StageTrainingArguments
) -> tuple[CacheInfo, str | None]:
    """Every path and setting that can be checked without loading weights: ``(cache info, resume)``."""
    info = read_cache_info(stage_args.cache)
    check_cache_resolution(info, stage_args.resolution)
    if stage_args.eval_cache:
        eval_info = read_cache_info(stage_args.eval_cache)
        if not eval_info.same_encoding(info):
            raise CacheError(f"eval_cache holds {eval_info.describe()} but cache holds {info.describe()}; they must match")
    check_start_path(policy_args)
    if training_args.n_gpu > 1:
        raise RuntimeError(
            f"{training_args.n_gpu} GPUs are visible to one process (torch DataParallel), which the visual-slice "
            "loss does not support; launch one process per GPU with `accelerate launch` instead"
        )
    # Last, as overwrite_output_dir moves the earlier run aside: resume rule + never over an earlier run.
    resume = prepare_output_dir(training_args)
    return info, resume


def _cache_rows(path: str, limit: int | None = None):
    rows = load_cache(path)[0].select_columns(list(_TEXT_COLUMNS))
    return rows.select(range(min(limit, len(rows)))) if limit else rows


def run(stage_args: StageArguments, policy_args: PolicyArguments, training_args: StageTrainingArguments) -> Path:
    """Train one stage; returns the run folder holding the final policy."""
    info, resume = check_before_loading(stage_args, policy_args, training_args)
    rows = _cache_rows(stage_args.cache, stage_args.max_train_samples)
    captions = (c for column in ("caption", "short_caption", "long_caption") for c in rows[column])
    policy = init_policy(policy_args, info, captions, seed=training_args.seed)
    builder = SequenceBuilder(
        policy.tokenizer,
        policy.vocab,
        stage_args.model_max_length,
        stage_args.caption_mode,
        stage_args.p_drop_cond,
        stage_args.loss_on_text,
    )
    max_positions = getattr(policy.model.config, "max_position_embeddings", None)
    if max_positions is not None and builder.model_max_length > max_positions:
        raise ValueError(
            f"model_max_length {builder.model_max_length} exceeds the model's max_position_embeddings {max_positions}"
        )
    train_set = TokenSequenceDataset(rows, builder, seed=training_args.seed)
    eval_set = None
    if stage_args.eval_cache:
        eval_set = TokenSequenceDataset(_cache_rows(stage_args.eval_cache), builder, seed=training_args.seed)

    trainer = VisualLMTrainer(
        model=policy.model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=functools.partial(collate_left_padded, pad_id=policy.pad_id),
        processing_class=policy.tokenizer,
        callbacks=[EpochSetter(train_set)],
        vocab=policy.vocab,
        loss_chunk_size=stage_args.loss_chunk_size,
    )
    with cpu_threads(stage_args.num_threads):
        trainer.train(resume_from_checkpoint=resume)
    save_final_model(trainer, training_args.output_dir)
    if trainer.is_world_process_zero():
        write_json(Path(training_args.output_dir) / RUN_INFO_FILE, {
            "stage": stage_args.stage,
            "cache": str(Path(stage_args.cache).resolve()),
            "cache_info": info.to_dict(),
            "start": policy_args.model_name_or_path,
            "model_max_length": builder.model_max_length,
            "caption_mode": stage_args.caption_mode,
            "p_drop_cond": stage_args.p_drop_cond,
            "loss_on_text": stage_args.loss_on_text,
            "global_step": trainer.state.global_step,
        })
    return Path(training_args.output_dir)


def train_stage(argv: list[str], stage: str | None = None) -> int:
    """Parse a recipe and train it; ``stage`` is the entry point's stage (None: the recipe's)."""
    run(*parse_args(argv, stage))
    return 0


@command("train")
def main(argv: list[str]) -> int:
    """``python -m pretrain_sft.train --config RECIPE`` (the recipe's ``stage`` decides the label)."""
    return train_stage(argv)


@command("pretrain")
def main_pretrain(argv: list[str]) -> int:
    """``simplear-rl pretrain --config RECIPE [--key value ...]``."""
    return train_stage(argv, stage="pretrain")


@command("sft")
def main_sft(argv: list[str]) -> int:
    """``simplear-rl sft --config RECIPE [--key value ...]``."""
    return train_stage(argv, stage="sft")


if __name__ == "__main__":
    sys.exit(main())
