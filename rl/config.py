"""Recipe dataclasses for image GRPO: script keys and the GRPO config with image-policy knobs.

A recipe is one flat YAML parsed by ``trl.TrlParser`` over ``(ScriptArguments, ImageGRPOConfig,
trl.ModelConfig)``: YAML sets defaults, ``--key value`` overrides, unknown keys are rejected.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from typing import Any

import torch
import yaml
from transformers.hf_argparser import string_to_bool
from trl import GRPOConfig

from policies.guidance import SamplingConfig
from policies.sampler import ROLLOUT_BACKENDS
from policies.rollout_weights import ROLLOUT_WEIGHTS
from pretrain_sft.checkpoints import OVERWRITE_HELP
from pretrain_sft.config import check_bf16_device

from .alerts import resolve_rules

LOGPROB_MODES = ("auto", "guided", "conditional")
ROLLOUT_PRECISIONS = ("auto", "float32", "bfloat16")
IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
PROMPT_LENGTHS = ("short", "long", "mix")


@dataclass
class ScriptArguments:
    """Data and policy-source keys of a GRPO recipe (everything that is not a training argument)."""

    train_prompts: str | None = field(
        default=None,
        metadata={"help": "Prompt set: JSONL / JSON / .txt file or HF datasets folder with a `prompt` column."},
    )
    eval_prompts: str | None = field(default=None, metadata={"help": "Held-out prompt set (same formats)."})
    monitor_prompts: str | None = field(
        default=None,
        metadata={"help": "Held-out prompt set (same formats) sampled every monitor_steps at fixed seeds and scored "
                  "with the trained and the monitor rewards (heldout/<name>/mean); its pictures make the report's "
                  "filmstrip."},
    )
    prompt_length: str = field(
        default="short",
        metadata={"help": "Which caption to train on: short (`prompt`), long (`long_prompt`) or mix (random per row).",
                  "choices": list(PROMPT_LENGTHS)},
    )
    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the short caption."})
    long_prompt_column: str = field(default="long_prompt", metadata={"help": "Column holding the long caption."})
    max_train_prompts: int | None = field(default=None, metadata={"help": "Use only the first N training prompts."})
    codec: str = field(default="cosmos", metadata={"help": "Visual codec: cosmos | palette | vqvae (the VQ-VAE inside a Janus or Emu3 checkpoint)."})
    codec_path: str | None = field(default=None, metadata={"help": "Local Cosmos tokenizer folder (codec: cosmos); a Janus / Emu3 checkpoint folder (codec: vqvae, default: the policy folder)."})
    codec_dtype: str | None = field(default=None, metadata={"help": "Codec dtype (default bf16 on GPU, fp32 on CPU)."})
    codec_levels: int = field(default=4, metadata={"help": "Palette codec: colour levels per channel."})
    codec_patch: int = field(default=8, metadata={"help": "Palette codec: pixels per patch side."})
    resolution: int | None = field(
        default=None, metadata={"help": "Image side in pixels; sets the grid via the codec (e.g. 1024 -> 64x64)."}
    )
    base_model: str | None = field(
        default=None,
        metadata={"help": "model_name_or_path is a LoRA run whose recorded base model has moved: the base's folder."},
    )
    tiny_hidden_size: int = field(default=128, metadata={"help": "model_name_or_path: tiny -> hidden size."})
    tiny_num_layers: int = field(default=2, metadata={"help": "model_name_or_path: tiny -> layers (its codebook is the codec's)."})


@dataclass
class ImageGRPOConfig(GRPOConfig):
    """TRL's ``GRPOConfig`` plus what an image policy needs. TRL keeps loss, KL and advantages."""

    cfg_scale: float = field(
        default=1.0, metadata={"help": "Classifier-free guidance scale for rollouts (1.0 = no uncond branch)."}
    )
    logprob_mode: str = field(
        default="auto",
        metadata={
            "help": "guided: trainer log-probs of the guided distribution the sampler drew from (the same "
            "distribution; equal log-probs up to float rounding: in fp32 a gap of a few 1e-6 on average and a few 1e-5 "
            "at most, logged as sampling/logprob_gap/mean|max); conditional: TRL's conditional-branch log-probs (SimpleAR/T2I-R1 behaviour); "
            "auto: guided when cfg_scale != 1, else conditional.",
            "choices": list(LOGPROB_MODES),
        },
    )
    prompt_prefix: str = field(default="", metadata={"help": "Text inserted at {prefix} in the cond template."})
    cond_template: str | None = field(
        default=None, metadata={"help": "Override the policy's cond template (needs {caption})."}
    )
    uncond_template: str | None = field(
        default=None,
        metadata={"help": "Override the uncond template, e.g. '<|t2i|>low quality, blurry<|soi|>' (negative prompt)."},
    )
    logprob_chunk_size: int = field(
        default=256, metadata={"help": "Completion positions per chunk when scoring over the visual slice."}
    )
    rewards: list[dict[str, Any]] | None = field(
        default=None,
        metadata={
            "help": "Reward specs. In YAML a list of mappings ({name, weight, ...kwargs}); on the command line "
            "`name[:weight]` items or YAML/JSON mappings."
        },
    )
    reward_aggregation: str = field(
        default="sum",
        metadata={"help": "sum: weighted sum then group-normalise; normalize_then_sum: normalise each reward per "
                  "group first. The logged `reward` is always what the advantages came from (under normalize_then_sum "
                  "its mean is ~0); normalize_then_sum also logs the weighted sum of the raw rewards as "
                  "reward_weighted_sum.", "choices": ["sum", "normalize_then_sum"]},
    )
    reward_on_error: str = field(
        default="fail",
        metadata={"help": "fail: stop on a raising/NaN/inf reward; drop: score None for those rows (counted).",
                  "choices": ["fail", "drop"]},
    )
    rollout_precision: str = field(
        default="auto",
        metadata={
            "help": "Compute dtype of rollouts: bfloat16 samples under bf16 autocast over the (fp32) weights, float32 "
            "in fp32; auto: bfloat16 when training with bf16: true, else float32.",
            "choices": list(ROLLOUT_PRECISIONS),
        },
    )
    rollout_backend: str = field(
        default="auto",
        metadata={
            "help": "Rollout sampler: eager (the reference loop), compiled (static KV cache + a torch.compile'd "
            "decode step, a CUDA graph on GPU; the same samples and log-probs, compiled once per batch size and grid, "
            "logged as rollout/compiles and rollout/compile_seconds) or auto (compiled on CUDA, eager on CPU).",
            "choices": list(ROLLOUT_BACKENDS),
        },
    )
    fp32_visual_head: bool = field(
        default=True,
        metadata={"help": "Compute the visual head (the last matmul) in float32 in rollouts and in scoring, even "
                  "under bf16 autocast: it shrinks the sampler-trainer log-prob gap (see docs/performance.md, Numerics)."},
    )
    rollout_weights: str = field(
        default="auto",
        metadata={
            "help": "What bf16 rollouts read: autocast (casts the fp32 masters as it goes; a compiled decode step "
            "re-casts every weight every step) or snapshot (a bf16 copy of the decoder's linear weights, exactly "
            "autocast's casts, refreshed before a rollout when an optimizer step changed the masters; the same "
            "log-probs, +0.67 GiB at 0.5B). auto: snapshot for the compiled backend under bf16 rollouts (not LoRA or "
            "sharded policies), autocast elsewhere. See docs/gpu.md.",
            "choices": list(ROLLOUT_WEIGHTS),
        },
    )
    importance_sampling_correction: bool | None = field(
        default=None,
        metadata={
            "help": "true | false | auto (unset). Correct the rollouts for the sampler-trainer mismatch with TRL's "
            "truncated/masked importance sampling (importance_sampling_mode / _clip_max / _clip_min apply): the "
            "sampler's per-token log-probs are the sampling log-probs. auto: on when rollouts run in another "
            "precision than float32 (logprob_mode: guided). Not available with logprob_mode: conditional, which "
            "scores another distribution than the sampled one by design. A bool once the config is built.",
        },
    )
    # Our names for TRL's vllm_importance_sampling_* keys (TRL runs that correction for vLLM rollouts; here it runs
    # for the CFG sampler's). Either spelling works; an alias that is set wins over the default of its TRL key.
    importance_sampling_mode: str | None = field(
        default=None,
        metadata={"help": "Alias of vllm_importance_sampling_mode: token_truncate (default here) | token_mask | "
                  "sequence_truncate | sequence_mask."},
    )
    importance_sampling_clip_max: float | None = field(
        default=None, metadata={"help": "Alias of vllm_importance_sampling_clip_max (default here 2.0)."}
    )
    importance_sampling_clip_min: float | None = field(
        default=None, metadata={"help": "Alias of vllm_importance_sampling_clip_min (default: none)."}
    )
    # TRL's defaults suit short texts: a sequence-level mask over 4,096 image tokens masks almost every
    # row, since per-token differences add up. Truncated token-level ratios (TIS, C=2) are the default.
    vllm_importance_sampling_mode: str = field(
        default="token_truncate",
        metadata={"help": "TRL's importance-sampling mode for the sampler correction: token_truncate | token_mask | "
                  "sequence_truncate | sequence_mask."},
    )
    vllm_importance_sampling_clip_max: float | None = field(
        default=2.0, metadata={"help": "Upper bound of the importance-sampling ratio (truncated, or masked above)."}
    )
    allow_low_precision_weights: bool = field(
        default=False,
        metadata={"help": "Experts only: train bf16/fp16 trainable weights without an fp32 master copy. AdamW updates "
                  "at lr ~1e-6 are below bf16's resolution on weights of ~1e-2 and round away (about 2% of the "
                  "elements move). Prefer dtype: float32 with bf16: true (fp32 masters, bf16 compute)."},
    )
    disable_dropout: bool = field(
        default=True,
        metadata={"help": "Disable dropout (also LoRA dropout, and the attention dropout decoders apply as a number: "
                  "Emu3's text model has 0.1) so rollouts and training score the same policy. TRL's default is false."},
    )
    sample_every: int = field(default=50, metadata={"help": "Save samples/step_<N>.png every N steps (0 = never)."})
    samples_per_grid: int = field(default=16, metadata={"help": "Images in each sample grid."})
    log_rollouts: bool = field(
        default=False,
        metadata={"help": "Write per-row rollout records (prompt, seed, rewards, advantage) to rollouts/rank<k>.jsonl."},
    )
    reward_curve_smoothing: float = field(
        default=0.8, metadata={"help": "EMA factor of the smoothed line in reward_curve.png."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_HELP})
    monitor_rewards: list[dict[str, Any]] | None = field(
        default=None,
        metadata={"help": "Rewards scored and logged (monitor/<name>/mean|std) but never optimised: weight 0 in the "
                  "advantage. Same spec syntax as `rewards`."},
    )
    monitor_steps: int = field(
        default=50, metadata={"help": "Score the monitor_prompts at step 0, every N steps and at the last step."}
    )
    monitor_num_prompts: int = field(default=8, metadata={"help": "Held-out prompts used: the first N of monitor_prompts."})
    monitor_images_per_prompt: int = field(
        default=2, metadata={"help": "Held-out images per prompt (fixed seeds; 2 or more also log heldout/diversity)."}
    )
    monitor_seed: int = field(default=1234, metadata={"help": "Seed of the held-out images (image k uses seed + k)."})
    alerts: dict | str | None = field(
        default=None,
        metadata={"help": "Alert rule overrides: a mapping rule -> {parameter: value} | false, e.g. "
                  "{kl_spike: {factor: 3}, diversity_floor: false}. Rules: reward_divergence, diversity_floor, "
                  "diversity_drop, entropy_collapse, kl_spike (see docs/monitoring.md)."},
    )
    stop_on_alert: bool = field(
        default=False,
        metadata={"help": "When an alert fires, save a checkpoint and stop (exit 0) with a message saying why."},
    )
    write_report: bool = field(
        default=True, metadata={"help": "Write report.html and report.md (simplear-rl report) at the end of training."}
    )
    # transformers 5.23+ deprecates `gradient_checkpointing` for `activation_checkpointing`, and TRL 1.16's
    # GRPOConfig still sets the OLD name's default to True, which makes every config warn (FutureWarning). TRL's
    # default (on) is kept on the new name and the old one is left unset: TrainingArguments.__post_init__ mirrors
    # the new value into `gradient_checkpointing`, which TRL's trainer still reads.
    activation_checkpointing: bool | None = field(  # the parser adds `--activation_checkpointing [bool]` and `--no_...`
        default=None,
        metadata={"help": "Enable activation checkpointing to trade compute for memory (default: on, as TRL's)."},
    )
    gradient_checkpointing: bool | None = field(
        default=None,
        metadata={
            "help": "Deprecated alias of `activation_checkpointing` (transformers >= 5.23); use that instead.",
            "nargs": "?",
            "const": True,
        },
    )

    def __post_init__(self) -> None:
        apply_importance_sampling_aliases(self)
        self.rewards = normalise_reward_specs(self.rewards)
        self.monitor_rewards = normalise_reward_specs(self.monitor_rewards)
        resolve_rules(self.alerts)  # refuses unknown rules and parameters up front
        if self.bf16 is None:  # TRL defaults to bf16, which fails on machines without it (CPU laptops)
            self.bf16 = not self.fp16 and bf16_available()
        if self.activation_checkpointing is None and self.gradient_checkpointing is None:
            self.activation_checkpointing = True  # TRL's default; an old `gradient_checkpointing` key still wins
        check_bf16_device(self)
        super().__post_init__()
        if self.logprob_mode not in LOGPROB_MODES:
            raise ValueError(f"logprob_mode must be one of {LOGPROB_MODES}, got {self.logprob_mode!r}")
        if self.logprob_mode == "auto":
            self.logprob_mode = "guided" if self.cfg_scale != 1.0 else "conditional"
        resolve_rollout_numerics(self)
        refuse_unworkable(self)

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale != 1.0

    def sampling_config(self) -> SamplingConfig:
        """The rollout sampler's settings; raises on values out of range (checked when the recipe is parsed)."""
        return SamplingConfig(
            cfg_scale=self.cfg_scale, temperature=self.temperature, top_k=self.top_k or 0, top_p=self.top_p
        )


def parse_switch(value: Any) -> bool | None:
    """``true``/``false`` (and the other spellings transformers accepts) -> bool; ``auto``/None -> None."""
    if value is None or isinstance(value, bool):
        return value
    if str(value).strip().lower() == "auto":
        return None
    try:
        return string_to_bool(str(value).strip().lower())
    except Exception:
        raise ValueError(f"expected true, false or auto, got {value!r}") from None


#: Recipe keys whose command-line (and YAML string) values the parser reads differently from their field type:
#: reward specs are strings there (``name:weight`` or YAML), the switch takes ``auto`` besides true/false.
PARSER_TYPES = {"rewards": str, "monitor_rewards": str, "importance_sampling_correction": parse_switch}


def apply_importance_sampling_aliases(args: "ImageGRPOConfig") -> None:
    """``importance_sampling_mode`` / ``_clip_max`` / ``_clip_min`` set TRL's ``vllm_importance_sampling_*`` keys."""
    defaults = {f.name: f.default for f in fields(args)}
    for alias in ("importance_sampling_mode", "importance_sampling_clip_max", "importance_sampling_clip_min"):
        value, trl_key = getattr(args, alias), f"vllm_{alias}"
        if value is None:
            continue
        if getattr(args, trl_key) not in (defaults[trl_key], value):
            raise ValueError(f"{alias}: {value} and {trl_key}: {getattr(args, trl_key)} disagree; set one of them")
        setattr(args, trl_key, value)
    if args.vllm_importance_sampling_mode not in IMPORTANCE_SAMPLING_MODES:
        raise ValueError(f"importance_sampling_mode must be one of {', '.join(IMPORTANCE_SAMPLING_MODES)}, "
                         f"got {args.vllm_importance_sampling_mode!r}")


def resolve_rollout_numerics(args: "ImageGRPOConfig") -> None:
    """Settle ``rollout_precision`` and whether TRL's importance-sampling correction runs (``auto`` values)."""
    value = str(args.rollout_precision).lower()
    if value not in ROLLOUT_PRECISIONS:
        raise ValueError(f"rollout_precision must be one of {', '.join(ROLLOUT_PRECISIONS)}, got {args.rollout_precision!r}")
    args.rollout_precision = value
    try:
        args.importance_sampling_correction = parse_switch(args.importance_sampling_correction)
    except ValueError as err:
        raise ValueError(f"importance_sampling_correction: {err}") from None
    if args.rollout_precision == "auto":
        args.rollout_precision = "bfloat16" if args.bf16 else "float32"
    if args.rollout_precision == "bfloat16" and not args.bf16:
        raise ValueError("rollout_precision: bfloat16 needs bf16: true (rollouts run under the trainer's bf16 autocast)")
    if args.rollout_weights not in ROLLOUT_WEIGHTS:
        raise ValueError(f"rollout_weights must be one of {', '.join(ROLLOUT_WEIGHTS)}, got {args.rollout_weights!r}")
    if args.rollout_weights == "snapshot" and args.rollout_precision != "bfloat16":
        raise ValueError("rollout_weights: snapshot needs bf16 rollouts (bf16: true, rollout_precision: bfloat16 or "
                         "auto); float32 rollouts read the weights as they are: use rollout_weights: autocast or auto")
    correction = args.importance_sampling_correction
    if correction and args.logprob_mode != "guided":
        raise ValueError(
            "importance_sampling_correction: true needs logprob_mode: guided. In conditional mode the trainer scores "
            "the conditional branch over the whole vocabulary, not the distribution the sampler drew from, so the "
            "ratio would correct the method, not the numerics"
        )
    if correction is None:  # auto
        correction = args.logprob_mode == "guided" and args.rollout_precision != "float32"
    args.importance_sampling_correction = correction
    # TRL reads its own flag; its correction code runs for our sampler's log-probs (see rl/trainer.py).
    args.vllm_importance_sampling_correction = correction


def bf16_available() -> bool:
    """Whether this machine can train in bf16 (an Ampere-or-newer CUDA GPU)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def normalise_reward_specs(specs: Any) -> list[dict] | None:
    """Reward specs as a list of dicts, whatever form the YAML or command line gave them in."""
    if specs is None:
        return None
    if isinstance(specs, (str, dict)):
        specs = [specs]
    out = []
    for item in specs:
        if isinstance(item, dict):
            out.append(dict(item))
            continue
        text = str(item).strip()
        if text.startswith(("{", "[")):
            parsed = yaml.safe_load(text)
            out.extend(normalise_reward_specs(parsed) or [])
            continue
        name, _, weight = text.partition(":")
        spec: dict[str, Any] = {"name": name.strip()}
        if weight:
            try:
                spec["weight"] = float(weight)
            except ValueError:
                raise ValueError(f"reward spec {text!r}: weight {weight!r} is not a number (use name:weight)") from None
        out.append(spec)
    for spec in out:
        if not spec.get("name"):
            raise ValueError(f"reward spec {json.dumps(spec)} has no `name`")
    return out


def refuse_unworkable(args: ImageGRPOConfig) -> None:
    """Reject settings that cannot work for fixed-size image grids, each with the fix."""
    args.sampling_config()
    if args.mask_truncated_completions:
        raise ValueError(
            "mask_truncated_completions=True would mask every image: a completion is a fixed h*w grid with no "
            "end-of-image token, so TRL sees all of them as truncated and the loss would be zero. Set it to false."
        )
    if args.use_vllm:
        raise ValueError(
            "use_vllm=True is not supported: rollouts use the CFG image sampler (cond and uncond in one batched "
            "forward with a KV cache). Set use_vllm: false."
        )
    if args.repetition_penalty != 1.0:
        raise ValueError(
            f"repetition_penalty={args.repetition_penalty}: image tokens repeat legitimately (flat regions); "
            "a repetition penalty distorts images and is not applied by the sampler. Set it to 1.0."
        )
    if args.min_p is not None:
        raise ValueError("min_p is not supported by the image sampler; use top_k / top_p")
    if args.rollout_backend not in ROLLOUT_BACKENDS:
        raise ValueError(f"rollout_backend must be one of {', '.join(ROLLOUT_BACKENDS)}, got {args.rollout_backend!r}")
    if args.logprob_chunk_size < 1:
        raise ValueError(f"logprob_chunk_size must be >= 1, got {args.logprob_chunk_size}")
    for key in ("monitor_steps", "monitor_num_prompts", "monitor_images_per_prompt"):
        if getattr(args, key) < 1:
            raise ValueError(f"{key} must be >= 1, got {getattr(args, key)}")
    clash = sorted({s.get("as", s["name"]) for s in args.rewards or []} & {s.get("as", s["name"]) for s in args.monitor_rewards or []})
    if clash:
        raise ValueError(f"monitor_rewards repeat the trained reward(s) {clash}; a monitor reward needs its own metric "
                         f"name: add `as: {clash[0]}_monitor` to its entry")
    if args.reward_weights is not None and args.rewards:
        raise ValueError(
            "set reward weights inside the `rewards` list ({name: ..., weight: ...}), not with reward_weights"
        )


#: GRPO keys a run records next to its weights (``simplear_policy.json``) for its model card.
RECORDED_KEYS = (
    "rewards", "reward_aggregation", "learning_rate", "lr_scheduler_type", "beta", "loss_type", "num_generations",
    "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps", "cfg_scale", "logprob_mode",
    "temperature", "top_k", "top_p", "prompt_prefix", "rollout_backend", "seed",
)


def run_recipe(args: "ImageGRPOConfig") -> dict[str, Any]:
    """The recipe values of a GRPO run that its records keep (JSON-safe)."""
    recipe = {"stage": "grpo"}
    for key in RECORDED_KEYS:
        value = getattr(args, key, None)
        recipe[key] = value if isinstance(value, (str, int, float, bool, list, dict, type(None))) else str(value)
    if isinstance(recipe.get("rewards"), list):  # a reward's credentials never reach a saved record
        recipe["rewards"] = [
            {k: v for k, v in spec.items() if not re.search(r"key|token|secret|password", k, re.I)}
            if isinstance(spec, dict) else spec for spec in recipe["rewards"]
        ]
    return json.loads(json.dumps(recipe, default=str))
