"""``simplear-rl grpo --config recipe.yaml`` and ``accelerate launch -m rl.grpo --config recipe.yaml``.

Builds, in order and failing fast: paths checked -> prompt sets -> rewards (their checkpoints are
checked before any model loads) -> policy -> codec -> :class:`rl.trainer.ImageGRPOTrainer`.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch
from accelerate import PartialState
from trl import ModelConfig, get_peft_config

from policies.codecs import build_codec_for
from policies.commands import BadInput, command
from policies.dtypes import resolve_dtype
from policies.loading import Policy, load_policy, load_source
from policies.sources import resolve_source
from policies.recipes import RecipeParser
from policies.tiny import build_tiny_policy, caption_words
from pretrain_sft.checkpoints import last_complete_checkpoint, prepare_output_dir

from .config import PARSER_TYPES, ImageGRPOConfig, ScriptArguments
from .data import load_prompt_set
from .precision import check_master_weights

logger = logging.getLogger(__name__)
TINY = "tiny"


def build_parser() -> RecipeParser:
    """The recipe parser: one flat YAML mixing script, GRPO and model keys."""
    parser = RecipeParser((ScriptArguments, ImageGRPOConfig, ModelConfig), command="grpo")
    for action in parser._actions:  # argparse reads these keys as recipe text, not as their field types
        if action.dest in PARSER_TYPES:
            action.type = PARSER_TYPES[action.dest]
    return parser


def check_paths(script: ScriptArguments, model_args: ModelConfig) -> None:
    """Every local path a recipe names exists, before anything heavy loads."""
    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required (a policy checkpoint folder, or `tiny` for a random tiny policy)")
    if model_args.model_name_or_path != TINY:  # a model folder, a run, a checkpoint, a LoRA run or a sharded one
        resolve_source(model_args.model_name_or_path, base=script.base_model)
    if not script.train_prompts:
        raise ValueError("train_prompts is required: a JSONL/JSON/.txt prompt file or a datasets folder")
    for key in ("train_prompts", "eval_prompts", "monitor_prompts"):
        value = getattr(script, key)
        if value and not Path(value).expanduser().exists():
            raise FileNotFoundError(f"{key} {value!r} does not exist")
    check_lora_targets(model_args)
    if script.codec == "cosmos":
        if not script.codec_path:
            raise ValueError("codec: cosmos needs codec_path (a local Cosmos-1.0-Tokenizer-DV8x16x16 folder)")
        if not Path(script.codec_path).expanduser().is_dir():
            raise FileNotFoundError(f"codec_path {script.codec_path!r} is not a folder")


def check_lora_targets(model_args: ModelConfig) -> None:
    """Refuse a LoRA adapter on the LM head: image tokens are scored on the head's visual rows (the rollout sampler
    and the guided scorer read its weight directly), so an adapter there would never act."""
    if not model_args.use_peft:
        return
    targets = model_args.lora_target_modules or []
    heads = [t for t in ([targets] if isinstance(targets, str) else targets) if t == "lm_head" or t.endswith(".lm_head")]
    if heads:
        raise BadInput(
            f"lora_target_modules names the LM head ({', '.join(heads)}): image tokens are scored on the visual rows "
            "of the head's own weight, so an adapter there would never act. Remove it from lora_target_modules "
            "(e.g. q_proj v_proj)"
        )


def codec_dtype(script: ScriptArguments, device: torch.device | str | None) -> torch.dtype:
    """The dtype the codec runs in on ``device``: ``codec_dtype``, by default bf16 on CUDA and fp32 on a CPU."""
    return resolve_dtype(script.codec_dtype, device)


def scoped_peft_config(model_args: ModelConfig, policy: Policy):
    """TRL's LoRA config, with its target modules restricted to the family's language model (a Janus or Emu3
    checkpoint also holds vision / VQ modules named ``q_proj``, ``fc1``, ...)."""
    config = get_peft_config(model_args)
    scope = policy.family.lora_scope
    if config is None or scope is None or isinstance(config.target_modules, str):
        return config
    names = "|".join(re.escape(name) for name in sorted(config.target_modules))
    config.target_modules = rf"{re.escape(scope)}\..*\.({names})"
    return config


def prompt_words(*tables) -> list[str]:
    """Every word of every caption column, for the tiny policy's word-level tokenizer."""
    columns = ("short_prompt", "long_prompt", "prompt")
    return caption_words(
        text for table in tables if table is not None for c in columns if c in table.column_names for text in table[c]
    )


def build_policy(script: ScriptArguments, model_args: ModelConfig, output_dir: str, codec, words: list[str]) -> Policy:
    """Load the policy named by ``model_name_or_path``; ``tiny`` builds and saves a random tiny one."""
    if model_args.model_name_or_path == TINY:
        grid = codec.grid_for(script.resolution) if script.resolution else (8, 8)
        # Saved (by the main process) so TRL can rebuild a reference model from the path when beta > 0.
        init_dir = Path(output_dir) / "init-policy"
        state = PartialState()
        with state.main_process_first():
            if state.is_main_process:
                build_tiny_policy(
                    words=words,
                    codebook_size=codec.codebook_size,
                    grid=grid,
                    hidden_size=script.tiny_hidden_size,
                    num_hidden_layers=script.tiny_num_layers,
                ).save(init_dir)
        return load_policy(init_dir, dtype=model_args.dtype)
    grid = codec.grid_for(script.resolution) if script.resolution else None
    source = resolve_source(model_args.model_name_or_path, base=script.base_model)
    if source.kind == "model":
        return load_source(source, dtype=model_args.dtype, grid=grid)
    # A LoRA run (merged) or a sharded checkpoint (consolidated) is written out once as the run's starting
    # folder: every rank loads the same weights, and TRL's reference model (beta > 0) reloads this policy.
    init_dir = Path(output_dir) / "init-policy"
    state = PartialState()
    with state.main_process_first():
        if state.is_main_process:
            load_source(source, dtype="float32").save(init_dir)
    return load_policy(init_dir, dtype=model_args.dtype, grid=grid)


def build_trainer(script: ScriptArguments, args: ImageGRPOConfig, model_args: ModelConfig, callbacks=None):
    """Everything a run needs, validated in order; returns the ready trainer."""
    from rewards import (
        build_rewards,  # heavy optional models load here, after the cheap checks
    )

    from .trainer import ImageGRPOTrainer

    check_paths(script, model_args)
    check_master_weights(args, model_args.dtype, model_args.use_peft)
    if not args.rewards:
        raise ValueError("the recipe names no rewards: add `rewards: [{name: ..., weight: ...}]`")
    train = load_prompt_set(
        script.train_prompts, script.prompt_length, script.prompt_column, script.long_prompt_column,
        seed=args.seed, limit=script.max_train_prompts,
    )
    evaluation = (
        load_prompt_set(script.eval_prompts, script.prompt_length, script.prompt_column, script.long_prompt_column,
                        seed=args.seed)
        if script.eval_prompts else None
    )
    monitor = (
        load_prompt_set(script.monitor_prompts, script.prompt_length, script.prompt_column, script.long_prompt_column,
                        seed=args.seed)
        if script.monitor_prompts else None
    )
    reward_suite = build_rewards(args.rewards, device=PartialState().device, aggregation=args.reward_aggregation)
    monitor_suite = build_rewards(args.monitor_rewards, device=PartialState().device) if args.monitor_rewards else None
    palette = {"levels": script.codec_levels, "patch": script.codec_patch} if script.codec == "palette" else {}
    # Built where the trainer runs, in its own dtype (the trainer only checks that it sits on its device).
    device = PartialState().device
    codec = build_codec_for(script.codec, script.codec_path, policy=model_args.model_name_or_path, base=script.base_model,
                            device=device, dtype=codec_dtype(script, device), **palette)
    policy = build_policy(script, model_args, args.output_dir, codec, prompt_words(train, evaluation, monitor))
    policy.family.prepare_for_training(policy.model)
    return ImageGRPOTrainer(
        policy=policy,
        codec=codec,
        rewards=reward_suite,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        peft_config=scoped_peft_config(model_args, policy),
        callbacks=callbacks,
        monitor_rewards=monitor_suite,
        monitor_prompts=monitor,
    )


@contextmanager
def wandb_environment(args: ImageGRPOConfig) -> Iterator[None]:
    """While training only: ``WANDB_DIR`` = the run folder and ``WANDB_PROJECT`` = simplear-rl, unless already set
    (transformers' WandbCallback reads them when it starts the wandb run). Later runs in this process see the
    environment as it was."""
    if not (args.report_to and "wandb" in args.report_to):
        yield
        return
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    added = {k: v for k, v in (("WANDB_DIR", args.output_dir), ("WANDB_PROJECT", "simplear-rl")) if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def finish_wandb(args: ImageGRPOConfig) -> None:
    """Close the wandb run so offline run folders are complete when ``run`` returns."""
    if args.report_to and "wandb" in args.report_to:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def train_and_save(trainer, args: ImageGRPOConfig, resume: str | None):
    """Train (resuming if asked) and save the final policy to ``output_dir``.

    A reward that fails while scoring (``reward_on_error: fail``) stops the run with its own message
    (reward and prompt) plus where to resume from.
    """
    from rewards.errors import RewardScoreError

    try:
        with wandb_environment(args):
            trainer.train(resume_from_checkpoint=resume)
    except RewardScoreError as err:
        last = last_complete_checkpoint(args.output_dir)
        where = (
            f"the last complete checkpoint is {last}; fix the reward and continue with --resume_from_checkpoint last"
            if last else "no checkpoint was saved yet (save_steps), so a rerun starts from the beginning"
        )
        raise RewardScoreError(f"{err} Training stopped at step {trainer.state.global_step}: {where}.") from err
    trainer.save_model(args.output_dir)
    finish_wandb(args)
    if trainer.accelerator.is_main_process:
        if args.write_report:
            from .run_report import build_run_report

            build_run_report(args.output_dir)
        logger.info("GRPO finished: metrics, reward_curve.png, samples/ and report.html are in %s", args.output_dir)
        alert = trainer.alerts.stopped_by
        if alert is not None:
            print(f"simplear-rl grpo: stopped at step {alert.step} because alert {alert.rule} fired (stop_on_alert: "
                  f"true): {alert.message}. Saved {Path(args.output_dir) / f'checkpoint-{alert.step}'}; look at "
                  f"{Path(args.output_dir) / 'report.html'}, then continue with --resume_from_checkpoint last "
                  "(a condition that still holds does not fire again) or change the recipe.", file=sys.stderr, flush=True)
    return trainer


def run(script: ScriptArguments, args: ImageGRPOConfig, model_args: ModelConfig):
    """Build, train and save; returns the trainer."""
    resume = prepare_output_dir(args)  # newest complete checkpoint; refuses to write over an earlier run
    return train_and_save(build_trainer(script, args, model_args), args, resume)


@command("grpo")
def main(argv: list[str] | None = None) -> int:
    """Parse a recipe (``--config x.yaml`` plus ``--key value`` overrides) and run GRPO.

    Problems found before training starts (bad keys, missing paths, reward or codec mismatches)
    exit with status 2, failures while training with 1; each is one line (see :mod:`policies.commands`).
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run(*build_parser().parse_args_and_config(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
