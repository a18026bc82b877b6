"""Recipe options of ``pretrain`` / ``sft``: dataclasses parsed by TRL's ``TrlParser``.

A recipe is a YAML file of these keys (``--config recipe.yaml``); any key can be overridden on
the command line (``--learning_rate 1e-5``); unknown keys are rejected with their name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from .checkpoints import OVERWRITE_HELP

STAGES = ("pretrain", "sft")


def check_bf16_device(args: TrainingArguments) -> None:
    """``bf16: true`` on a machine without a CUDA GPU needs ``use_cpu: true``; say so instead of transformers' hint.

    Call it before ``TrainingArguments.__post_init__`` (shared by the pretrain/SFT and GRPO configs).
    """
    import torch

    if args.bf16 and not args.use_cpu and not torch.cuda.is_available():
        raise ValueError(
            "bf16: true asks for bf16 autocast, but no CUDA GPU is visible; on a CPU add use_cpu: true (bf16 "
            "autocast on the CPU) or set bf16: false"
        )


@dataclass
class StageArguments:
    """Which stage, which cache, and how sequences and the loss are built."""

    cache: str = field(metadata={"help": "token cache folder written by `simplear-rl extract-tokens`"})
    stage: Literal["pretrain", "sft"] | None = field(
        default=None, metadata={"help": "pretrain | sft: a label checked against the command (recipes differ only in values)"}
    )
    eval_cache: str | None = field(default=None, metadata={"help": "optional token cache for evaluation loss"})
    resolution: int | None = field(
        default=None, metadata={"help": "expected cache resolution in pixels; a cache of another resolution is refused"}
    )
    caption_mode: Literal["short", "long", "mix"] = field(
        default="mix", metadata={"help": "short | long | mix (random per sample); short falls back to the first sentence"}
    )
    p_drop_cond: float = field(default=0.1, metadata={"help": "probability of dropping the caption (unconditional rows for CFG)"})
    model_max_length: int | None = field(
        default=None, metadata={"help": "prompt + visual tokens; captions are cut to fit (default: visual tokens + 512)"}
    )
    loss_on_text: bool = field(default=False, metadata={"help": "also train on the prompt tokens"})
    loss_chunk_size: int = field(default=256, metadata={"help": "positions per chunk of visual logits in the loss"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use only the first N cache rows"})
    num_threads: int | None = field(
        default=None, metadata={"help": "torch intra-op CPU threads; 1 is fastest for tiny models on a shared CPU"}
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.p_drop_cond <= 1.0:
            raise ValueError(f"p_drop_cond must be in [0, 1], got {self.p_drop_cond}")
        if self.loss_chunk_size < 1:
            raise ValueError(f"loss_chunk_size must be >= 1, got {self.loss_chunk_size}")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")


@dataclass
class PolicyArguments:
    """Where the policy starts: a SimpleAR/simplear-rl checkpoint, a Qwen2 LLM folder, or ``tiny``."""

    model_name_or_path: str = field(
        metadata={"help": "checkpoint folder, Qwen2 LLM folder (vocabulary gets extended), or `tiny` (random, built in code)"}
    )
    dtype: str = field(default="float32", metadata={"help": "weight dtype when loading (mixed precision comes from --bf16)"})
    attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2"})
    prompt_prefix: str | None = field(
        default=None, metadata={"help": "text placed before every caption (default: the checkpoint's, else empty)"}
    )
    tiny_hidden_size: int = field(default=128, metadata={"help": "`tiny` policy: hidden size"})
    tiny_num_layers: int = field(default=2, metadata={"help": "`tiny` policy: decoder layers"})
    tiny_num_heads: int = field(default=4, metadata={"help": "`tiny` policy: attention heads"})
    tiny_num_kv_heads: int = field(default=2, metadata={"help": "`tiny` policy: key/value heads"})
    tiny_intermediate_size: int | None = field(default=None, metadata={"help": "`tiny` policy: MLP size (default: 2x hidden)"})


@dataclass
class StageTrainingArguments(TrainingArguments):
    """``transformers.TrainingArguments`` with defaults for image-token training.

    ``resume_from_checkpoint``: ``last`` (newest complete ``checkpoint-*`` in ``output_dir``) or a path;
    ``overwrite_output_dir``: start again in an ``output_dir`` that holds an earlier run (moved aside).
    """

    output_dir: str | None = field(default=None, metadata={"help": "run folder: checkpoints and the final model"})
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_HELP})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "SimpleAR used a constant learning rate"})
    logging_steps: float = field(default=10, metadata={"help": "log the loss every N steps (a float < 1: a fraction of the run)"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "kept False: the token-cache rows are not model inputs"})
    prediction_loss_only: bool = field(default=True, metadata={"help": "evaluation keeps only the loss (no logits)"})

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("output_dir is not set; give the run folder in the recipe or with --output_dir")
        check_bf16_device(self)
        super().__post_init__()
