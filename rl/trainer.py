"""GRPO for AR image policies: TRL's ``GRPOTrainer`` with an image rollout and guided log-probs.

One step: TRL's ``_prepare_inputs`` -> ``_generate_and_score_completions`` -> our ``_generate``
(template prompts, CFG-sample code grids, decode, hand images to the rewards) -> TRL's rewards,
group advantages and buffering -> TRL's ``_compute_loss`` -> our
``_get_per_token_logps_and_entropies`` (guided mode). TRL keeps the loss, KL, advantages, gather,
PEFT reference and checkpointing.

The TRL boundary (trl 1.16.0, pinned: all but ``use_vllm`` and ``save_model`` are private methods).
Overrides hand each other per-step values only through ``self._step_state`` (:class:`StepState`).

=================================== ===================== ====================================== ====================
override                            TRL's caller          what it changes                        ``self._step_state``
=================================== ===================== ====================================== ====================
``_generate(prompts)``              ``_generate_and_      the rollout: template and encode the   sets ``rollout``
                                    score_completions``   prompts, CFG-sample code grids,        (prompts, seeds,
                                                          decode them; returns a                 codes, images,
                                                          :class:`Generation` (TRL's 8 values,   sampler log-probs)
                                                          named): images for the rewards, row
                                                          ends out of the loss (tool mask), the
                                                          sampler's log-probs as TRL's sampling
                                                          log-probs
``_calculate_rewards``              ``_generate_and_      nothing (TRL's, then kept)             sets
                                    score_completions``                                          ``rewards_per_func``
``_generate_and_score_completions`` ``_prepare_inputs``   after TRL's: adds ``sampler_logps``    takes ``rollout``,
                                                          (they follow TRL's shuffle), logs the  reads ``rewards_
                                                          clipped IS fraction, the trained-on    per_func``, sets
                                                          reward (normalize_then_sum), rollout   ``rollout_step``
                                                          records, sample grids, monitors
``_compute_loss``                   ``compute_loss``      nothing (TRL's)                        sets ``loss_inputs``
                                                                                                 while it runs
``_get_per_token_logps_and_         ``_generate_and_      guided mode: one stacked cond+uncond   reads ``loss_inputs``
entropies``                         score_completions``   forward over the visual slice, with    and ``rollout_step``
                                    (old/ref log-probs),  the sampler's guidance, temperature,   (logs ``sampling/
                                    ``_compute_loss``     top-k, top-p; conditional: TRL's       logprob_gap/*``)
``use_vllm`` (property)             every ``if self.      True exactly when the IS correction    --
                                    use_vllm``            is on, so TRL corrects with the
                                                          sampler's log-probs; True is refused
                                                          as a setting (no vLLM engine)
``save_model``                      ``Trainer``           also writes the policy record          --
=================================== ===================== ====================================== ====================

Why not TRL's public ``rollout_func`` (an ``__init__`` argument: ``f(prompts, trainer) -> dict`` with
``prompt_ids``, ``completion_ids``, ``logprobs``, extra fields and an ``env_mask`` for forced tokens)? It
would replace only ``_generate``: the other overrides stay (the sampler log-probs still have to be added
after TRL's ``_generate_and_score_completions``, guided scoring still overrides the log-prob method, and
``use_vllm`` still has to be True for TRL's correction). And it would change behaviour: with ``use_vllm``
True, TRL's ``rollout_func`` path calls ``self.vllm_generation.sync_weights()`` every step (an engine we
never build), and it decodes the completions with the tokenizer (visual ids lie outside the text
vocabulary) instead of our ``<image hxw>`` placeholders; it is marked experimental and warns. So
``_generate`` stays an override.

Numerics: trainable weights are fp32 masters; training computes under the trainer's bf16 autocast
(``bf16: true``) and so do rollouts (``rollout_precision``). The sampler's per-token log-probs go
to TRL's sampling-log-prob path, where TRL's truncated/masked importance-sampling correction (the
one it runs for vLLM rollouts) corrects the remaining sampler-trainer mismatch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from transformers import ProgressCallback
from trl import GRPOTrainer
from trl.models import unwrap_model_for_generation

from policies.codecs import VisualCodec, check_codec_matches, codec_record
from policies.images import captioned_grid, save_png, to_unit
from policies.loading import Policy
from policies.rollout_weights import RolloutWeights
from policies.sampler import sample_images
from policies.sharding import fsdp2_rollout, fsdp2_units
from policies.sources import write_policy_record
from policies.rollout import COMPILE_STATS
from policies.scoring import guided_token_logprobs

from .alerts import AlertCallback
from .callbacks import MetricsFileCallback, RewardCurveCallback, RewardProgressCallback
from .config import ImageGRPOConfig, run_recipe
from .monitor import HeldOutMonitor, RolloutWatch
from .precision import check_trainable_dtypes

logger = logging.getLogger(__name__)

SAMPLER_LOGPS_KEY = "sampler_logps"


class Generation(NamedTuple):
    """What ``_generate`` returns: TRL 1.16's 8 values, in the order TRL unpacks them (a NamedTuple is that tuple)."""

    prompt_ids: list[list[int]]  # per row, unpadded (TRL left-pads)
    completion_ids: list[list[int]]  # per row, LM ids (offset + code, forced row ends included)
    tool_mask: list[list[int]] | None  # 0 at forced tokens (kept out of the loss), None when there are none
    completions: list[str]  # placeholders shown in TRL's completion tables
    sampling_logps: list[list[float]] | None  # the sampler's log-probs, when TRL's IS correction runs
    extra_fields: dict[str, list]  # merged into the rows: the reward functions' ``images``
    images: None  # images for the forward pass: none
    tool_images: list  # TRL's tool images: none


@dataclass
class RolloutBatch:
    """One process's rollout, as the rest of the step uses it (reward records, sample grids, monitors)."""

    prompts: list[str]
    seeds: list[int]
    codes: torch.Tensor  # [rows, h, w]
    images: torch.Tensor  # [rows, 3, H, W] in [0, 1]
    logps: torch.Tensor  # [rows, completion length]: the sampler's per-token log-probs


@dataclass
class StepState:
    """What the overrides of one step hand each other (see the table above); TRL passes nothing of ours along."""

    rollout: RolloutBatch | None = None  # _generate -> _generate_and_score_completions
    rewards_per_func: torch.Tensor | None = None  # _calculate_rewards -> rollout records (gathered rows)
    rollout_step: int = -1  # global step of the latest rollout: the log-prob gap is logged before any update
    loss_inputs: dict[str, Any] | None = None  # _compute_loss -> _get_per_token_logps_and_entropies


class ImageGRPOTrainer(GRPOTrainer):
    """GRPO on image token grids.

    Args:
        policy: the policy (model, tokenizer, visual layout) to train.
        codec: decodes sampled code grids into images for the rewards.
        rewards: a ``rewards.RewardSuite`` (names, weights, aggregation, TRL reward functions).
        args: :class:`rl.config.ImageGRPOConfig`.
        train_dataset / eval_dataset: prompt sets whose ``prompt`` column is the caption.
        peft_config: a ``peft.LoraConfig`` for LoRA training (reference = adapter disabled).
        monitor_rewards: a ``rewards.RewardSuite`` scored on every rollout and logged, never optimised.
        monitor_prompts: a held-out prompt set sampled at fixed seeds every ``monitor_steps`` (rl/monitor.py).
    """

    def __init__(
        self,
        policy: Policy,
        codec: VisualCodec,
        rewards,
        args: ImageGRPOConfig,
        train_dataset,
        eval_dataset=None,
        peft_config=None,
        callbacks=None,
        monitor_rewards=None,
        monitor_prompts=None,
    ):
        vocab = policy.vocab.replace(prompt_prefix=args.prompt_prefix)
        if args.cond_template:
            vocab = vocab.replace(cond_template=args.cond_template)
        if args.uncond_template:
            vocab = vocab.replace(uncond_template=args.uncond_template)
        check_codec_matches(codec, vocab.codebook_size, vocab.grid)
        vocab = vocab.with_codec(codec_record(codec))
        vocab.attach_to_config(policy.model.config)  # checkpoints carry the layout, templates and codec
        for dataset in (train_dataset, eval_dataset, monitor_prompts):
            for suite in (rewards, monitor_rewards):
                if dataset is not None and suite is not None:
                    suite.validate_columns(set(dataset.column_names))
        if args.max_completion_length != vocab.completion_length:
            logger.info("max_completion_length set to the completion length %d", vocab.completion_length)
            args.max_completion_length = vocab.completion_length
        args.reward_weights = list(rewards.weights)
        args.multi_objective_aggregation = "sum_then_normalize" if rewards.aggregation == "sum" else "normalize_then_sum"
        self.vocab = vocab
        # The policy as trained here (recipe templates applied): prompt encoding goes through it.
        self.policy = Policy(model=policy.model, tokenizer=policy.tokenizer, vocab=vocab, family=policy.family)
        self.reward_suite = rewards
        self.sampling = args.sampling_config()  # what rollouts sample with and guided scoring scores
        if args.logprob_mode == "conditional" and self.sampling.truncates(vocab.codebook_size):
            logger.warning(
                "logprob_mode=conditional scores without top-k/top-p truncation while rollouts truncate; "
                "use logprob_mode: guided to score exactly the sampled distribution"
            )
        if args.logprob_mode == "conditional" and args.uses_cfg:
            logger.warning(
                "logprob_mode=conditional with cfg_scale=%s: rollouts come from the guided distribution but the "
                "policy gradient uses conditional log-probs (SimpleAR/T2I-R1 behaviour)", args.cfg_scale
            )
        super().__init__(
            model=policy.model,
            reward_funcs=rewards.trl_reward_funcs(on_error=args.reward_on_error),
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=policy.tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
        check_trainable_dtypes(self.model, args)
        # TRL 1.16 runs its importance-sampling correction of sampling log-probs only `if self.use_vllm`; our
        # sampler's log-probs take that path (see the `use_vllm` property). Switched on after TRL's __init__, so
        # TRL sets up no vLLM engine.
        self._sampler_correction = bool(args.vllm_importance_sampling_correction)
        self.codec = codec.to(self.accelerator.device)
        if self.ref_model is not None:  # TRL builds it from the checkpoint: give it the family's id space too
            policy.family.adapt_model(self.ref_model)
        if args.disable_dropout:  # TRL zeroes nn.Dropout modules; attention dropout is a float the layers read
            for model in (self.model, self.ref_model):
                disable_attention_dropout(model)
        self._pad_id = self.policy.pad_id
        self._rollout_weights = RolloutWeights(args.rollout_weights, args.rollout_precision == "bfloat16")
        self._step_state = StepState()
        self._seed_calls: dict[tuple, int] = defaultdict(int)
        self._last_sample_step = -1
        self._units_logged = False
        self.remove_callback(ProgressCallback)
        self.add_callback(RewardProgressCallback())
        self.add_callback(MetricsFileCallback(args.output_dir))
        self.add_callback(RewardCurveCallback(args.output_dir, smoothing=args.reward_curve_smoothing))
        #: Monitor rewards and group diversity of every training rollout (see rl/monitor.py).
        self.rollout_watch = RolloutWatch(rewards, monitor_rewards)
        # Alerts first: on resume they replay metrics.jsonl before the held-out monitor logs anything.
        self.alerts = AlertCallback(args.output_dir, args.alerts, stop_on_alert=args.stop_on_alert)
        self.add_callback(self.alerts)
        if monitor_prompts is not None:
            self.add_callback(HeldOutMonitor(self, monitor_prompts, [rewards] + ([monitor_rewards] if monitor_rewards else [])))

    @property
    def use_vllm(self) -> bool:
        """TRL's switch for its sampling-log-prob importance-sampling correction (vLLM itself is never used)."""
        return getattr(self, "_sampler_correction", False)

    @use_vllm.setter
    def use_vllm(self, value: bool) -> None:
        if value:  # refused in the config already; this guards TRL code paths that would start vLLM
            raise ValueError("use_vllm is not supported: rollouts use the CFG image sampler")

    def _rollout_autocast(self):
        """The autocast region rollouts run in: bf16 over the fp32 weights, or none (``rollout_precision``)."""
        if self.args.rollout_precision == "float32":
            return nullcontext()
        return torch.autocast(device_type=self.accelerator.device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------------ rollout
    def _rollout_seeds(self, n: int, mode: str) -> list[int]:
        """Per-row seeds from (seed, step, mode, rank, call): reproducible, distinct across ranks and rows."""
        key = (mode, self.state.global_step)
        call = self._seed_calls[key]
        self._seed_calls[key] += 1
        entropy = [self.args.seed, self.state.global_step, int(mode == "eval"), self.accelerator.process_index, call]
        return [int(s) for s in np.random.SeedSequence(entropy).generate_state(n, dtype=np.uint32)]

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save as TRL does, plus the policy record (family, layout, templates, codec, recipe) that lets a LoRA
        adapter or a sharded checkpoint load as this policy anywhere (:mod:`policies.sources`)."""
        super().save_model(output_dir, _internal_call=_internal_call)
        if not self.args.should_save:
            return
        out = Path(output_dir or self.args.output_dir)
        model = self.accelerator.unwrap_model(self.model)
        config = model.config
        if not (out / "config.json").exists() and not (out / "adapter_config.json").exists():
            # An engine that saved no whole weights (FSDP2 sharded state dict): config and tokenizer for consolidation.
            config.save_pretrained(out)
            self.processing_class.save_pretrained(out)
        write_policy_record(out, config.model_type, self.vocab.to_dict(), getattr(config, "_name_or_path", None),
                            run_recipe(self.args))

    def sample_grids(self, prompt_ids: list[list[int]], seeds: list[int]):
        """CFG-sample code grids for ``prompt_ids`` at ``seeds`` with the current policy and decode them:
        ``(rollout, images in [0, 1])``. Changes no trainer state (rollouts and the held-out monitor use it)."""
        if not self._units_logged:  # FSDP2 wraps the model when training starts: say what it sharded, once
            self._units_logged = True
            units = fsdp2_units(self.model_wrapped)
            if units and self.accelerator.is_main_process:
                logger.info("FSDP2 units: %s", ", ".join(f"{name} x{n}" for name, n in sorted(units.items())))
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                gradient_checkpointing_kwargs=self.args.activation_checkpointing_kwargs,
            ) as unwrapped,
            torch.no_grad(),
            fsdp2_rollout(self.model_wrapped),
        ):
            # One region: the eager backend casts each weight to bf16 once per rollout (a compiled step in its graph).
            with self._rollout_autocast():
                model = self._rollout_weights.model_for(unwrapped, self.args.rollout_backend)  # or its bf16 snapshot
                rollout = sample_images(
                    model, self.vocab, prompt_ids, self.policy.uncond_prompts(prompt_ids), self.sampling, seeds,
                    pad_id=self._pad_id, fp32_head=self.args.fp32_visual_head, backend=self.args.rollout_backend,
                )
            images = to_unit(self.codec.decode(rollout.codes))
        return rollout, images

    def _generate(self, prompts: list):
        mode = "train" if self.model.training else "eval"
        if not all(isinstance(p, str) for p in prompts):
            raise TypeError("image GRPO expects plain-text prompts (the caption), not conversations")
        prompt_ids = self.policy.encode_prompts(prompts)
        seeds = self._rollout_seeds(len(prompts), mode)
        start = time.perf_counter()
        rollout, images = self.sample_grids(prompt_ids, seeds)
        device = self.accelerator.device
        metrics = self._metrics[mode]
        # The slowest process's figures (every rank waits for it). Compile counts are process totals of the compiled
        # backend: flat after the first step when every rollout reuses one graph.
        own = torch.tensor([time.perf_counter() - start, COMPILE_STATS.compiles, COMPILE_STATS.seconds], device=device)
        slowest = self.accelerator.gather(own.unsqueeze(0)).max(dim=0).values.tolist()
        metrics["rollout/seconds"].append(slowest[0])
        metrics["rollout/compiles"].append(slowest[1])
        metrics["rollout/compile_seconds"].append(slowest[2])
        metrics["entropy/visual_sampler"].append(self.accelerator.gather(rollout.entropy.mean().to(device)).mean().item())
        tokens = torch.tensor(sum(len(p) for p in prompt_ids) + rollout.token_ids.numel(), device=device)
        if mode == "train":
            self.state.num_input_tokens_seen += self.accelerator.gather(tokens).sum().item()
        metrics["num_tokens"] = [self.state.num_input_tokens_seen]

        self._step_state.rollout = RolloutBatch(prompts=list(prompts), seeds=seeds, codes=rollout.codes, images=images,
                                          logps=rollout.logprobs)
        h, w = self.vocab.grid
        # Forced structural tokens (row ends) stay in the sequence but out of the loss: TRL's tool mask does that.
        forced = self.vocab.forced(rollout.token_ids)
        return Generation(
            prompt_ids=prompt_ids,
            completion_ids=rollout.token_ids.tolist(),
            tool_mask=(~forced).int().tolist() if bool(forced.any()) else None,
            completions=[f"<image {h}x{w}>"] * len(prompts),
            sampling_logps=rollout.logprobs.tolist() if self._sampler_correction else None,
            extra_fields={"images": list(images)},
            images=None,
            tool_images=[],
        )

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._step_state.rewards_per_func = rewards_per_func
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        rollout, self._step_state.rollout = self._step_state.rollout, None
        width = output["completion_ids"].size(1)
        logps = rollout.logps.to(output["completion_ids"].device)
        if logps.size(1) < width:  # completions padded by pad_to_multiple_of
            logps = torch.nn.functional.pad(logps, (0, width - logps.size(1)))
        output[SAMPLER_LOGPS_KEY] = logps
        if self._sampler_correction:
            self._log_clipped_fraction(output)
        self._step_state.rollout_step = self.state.global_step
        if self.reward_suite.aggregation != "sum":
            self._log_trained_reward()
        if self.model.training:
            self._record_rollout(rollout, output["advantages"])
            self.rollout_watch.log(self, rollout, inputs)
        return output

    def _log_clipped_fraction(self, output: dict) -> None:
        """Fraction of importance-sampling ratios (tokens or sequences) outside TRL's clip bounds, next to TRL's
        ``sampling/importance_sampling_ratio/{min,mean,max}``."""
        args = self.args
        mask = scored_tokens(output)
        diff = (output["old_per_token_logps"] - output["sampling_per_token_logps"]).masked_fill(~mask, 0.0)
        low = args.vllm_importance_sampling_clip_min if args.vllm_importance_sampling_clip_min is not None else -math.inf
        high = args.vllm_importance_sampling_clip_max if args.vllm_importance_sampling_clip_max is not None else math.inf
        if args.vllm_importance_sampling_mode.startswith("sequence"):
            ratio = diff.sum(dim=-1).exp()
        else:
            ratio = diff.exp()[mask]
        outside = ((ratio < low) | (ratio > high)).float()
        stats = torch.stack([outside.sum(), torch.tensor(float(outside.numel()), device=outside.device)])
        gathered = self.accelerator.gather(stats.unsqueeze(0))
        mode = "train" if self.model.training else "eval"
        fraction = (gathered[:, 0].sum() / gathered[:, 1].sum().clamp(min=1)).item()
        self._metrics[mode]["sampling/importance_sampling_ratio/clipped_frac"].append(fraction)

    def _trained_and_raw_rewards(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row of the gathered batch: the reward TRL took the advantages from, and the weighted sum of the raw
        rewards. They are the same under ``reward_aggregation: sum``; under ``normalize_then_sum`` the first is the
        weighted sum of each reward normalised within its group (:meth:`rewards.RewardSuite.combine`, TRL's maths)."""
        per_func = self._step_state.rewards_per_func.float().cpu()
        raw = (per_func * torch.tensor(self.args.reward_weights, dtype=torch.float32)).nansum(dim=1)
        if self.reward_suite.aggregation == "sum":
            return raw, raw
        group = self.num_generations if self.model.training else self.num_generations_eval
        columns = {name: per_func[:, j] for j, name in enumerate(self.reward_suite.names)}
        return self.reward_suite.combine(columns, group_size=group), raw

    def _log_trained_reward(self) -> None:
        """TRL logs ``reward`` as the weighted sum of the raw rewards whatever the aggregation. Under
        ``normalize_then_sum`` that is not what it trained on: ``reward``/``reward_std`` become the trained-on reward
        (each reward normalised within its group, then weighted and summed: its mean is ~0 by construction) and the
        raw weighted sum moves to ``reward_weighted_sum``/``reward_weighted_sum_std`` (the curve to watch rise)."""
        from trl.trainer.utils import nanstd

        metrics = self._metrics["train" if self.model.training else "eval"]
        trained, _ = self._trained_and_raw_rewards()
        metrics["reward_weighted_sum"].append(metrics["reward"][-1])
        metrics["reward_weighted_sum_std"].append(metrics["reward_std"][-1])
        metrics["reward"][-1] = torch.nanmean(trained).item()
        metrics["reward_std"][-1] = nanstd(trained).item()

    def _local_rewards(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's rows of the gathered per-reward matrix, their trained-on rewards and raw weighted sums."""
        start = self.accelerator.process_index * n
        trained, raw = self._trained_and_raw_rewards()
        rows = slice(start, start + n)
        return self._step_state.rewards_per_func[rows].float().cpu(), trained[rows], raw[rows]

    def _record_rollout(self, rollout: RolloutBatch, advantages: torch.Tensor) -> None:
        n = len(rollout.prompts)
        per_func, totals, raw = self._local_rewards(n)
        normalised = self.reward_suite.aggregation != "sum"
        step = self.state.global_step
        if self.args.log_rollouts:
            path = Path(self.args.output_dir) / "rollouts" / f"rank{self.accelerator.process_index}.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                for i in range(n):
                    record = {
                        "step": step,
                        "rank": self.accelerator.process_index,
                        "row": i,
                        "prompt": rollout.prompts[i],
                        "seed": rollout.seeds[i],
                        "rewards": {name: float(per_func[i, j]) for j, name in enumerate(self.reward_func_names)},
                        "reward": float(totals[i]),  # what the advantage came from
                        **({"reward_weighted_sum": float(raw[i])} if normalised else {}),
                        "advantage": float(advantages[i]),
                    }
                    f.write(json.dumps(record) + "\n")
        every = self.args.sample_every
        if every > 0 and step % every == 0 and step != self._last_sample_step and self.accelerator.is_main_process:
            self._last_sample_step = step
            k = min(n, self.args.samples_per_grid)
            # r: the reward trained on; under normalize_then_sum also the weighted sum of the raw rewards
            captions = [f"{p} | r={float(r):.3f}" + (f" raw={float(s):.3f}" if normalised else "")
                        for p, r, s in zip(rollout.prompts[:k], totals[:k], raw[:k])]
            grid = captioned_grid(rollout.images[:k].cpu(), captions)
            path = save_png(grid, Path(self.args.output_dir) / "samples" / f"step_{step}.png")
            self._log_image_to_wandb(path, step)

    def _log_image_to_wandb(self, path: Path, step: int) -> None:
        if not self.args.report_to or "wandb" not in self.args.report_to:
            return
        import wandb

        if wandb.run is not None:
            wandb.log({"samples": wandb.Image(str(path), caption=f"step {step}")}, commit=False)

    # ---------------------------------------------------------------- scoring
    def _compute_loss(self, model, inputs):
        self._step_state.loss_inputs = inputs
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._step_state.loss_inputs = None

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **kwargs,
    ):
        if self.args.logprob_mode == "guided":
            logps, entropies = self._guided_logps(model, input_ids, attention_mask, logits_to_keep, batch_size)
            aux = None
        else:
            logps, entropies, aux = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **kwargs
            )
        if self._step_state.loss_inputs is not None:
            self._log_logprob_gap(logps, self._step_state.loss_inputs)
        return logps, entropies, aux

    def _guided_logps(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None):
        """Guided log-probs and entropies of the completions (visual slice, one stacked forward per chunk)."""
        batch_size = batch_size or input_ids.size(0)
        prompt_ids, prompt_mask = input_ids[:, :-logits_to_keep], attention_mask[:, :-logits_to_keep]
        completion = input_ids[:, -logits_to_keep:]
        completion_mask = attention_mask[:, -logits_to_keep:].bool()
        # Right padding (pad_to_multiple_of) is scored as code 0 and masked out by TRL.
        completion = torch.where(completion_mask, completion, torch.full_like(completion, self.vocab.offset))
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = range(start, min(start + batch_size, input_ids.size(0)))
            cond = [prompt_ids[i][prompt_mask[i].bool()].tolist() for i in rows]
            with self.accelerator.autocast():
                logps, entropies = guided_token_logprobs(
                    model,
                    self.vocab,
                    cond,
                    self.policy.uncond_prompts(cond),
                    completion[start : start + len(cond)],
                    self.sampling,
                    pad_id=self._pad_id,
                    chunk_size=self.args.logprob_chunk_size,
                    fp32_head=self.args.fp32_visual_head,
                )
            all_logps.append(logps)
            all_entropies.append(entropies)
        return torch.cat(all_logps), torch.cat(all_entropies)

    def _log_logprob_gap(self, logps: torch.Tensor, inputs: dict) -> None:
        """mean/max |sampler log-prob - trainer log-prob| while no optimizer step has happened since the rollout."""
        if self.state.global_step != self._step_state.rollout_step or SAMPLER_LOGPS_KEY not in inputs:
            return
        mask = scored_tokens(inputs)
        gap = (logps.detach().float() - inputs[SAMPLER_LOGPS_KEY].float()).abs()[mask]
        stats = torch.stack([gap.sum(), torch.tensor(float(gap.numel()), device=gap.device), gap.max() if gap.numel() else gap.new_zeros(())])
        gathered = self.accelerator.gather(stats.unsqueeze(0))
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["sampling/logprob_gap/mean"].append((gathered[:, 0].sum() / gathered[:, 1].sum().clamp(min=1)).item())
        self._metrics[mode]["sampling/logprob_gap/max"].append(gathered[:, 2].max().item())


def scored_tokens(batch: dict) -> torch.Tensor:
    """Boolean mask of the completion tokens the loss sees: TRL's completion mask times its tool mask, which is 0 at
    forced row-end tokens (they are fed, never sampled)."""
    mask = batch["completion_mask"].bool()
    return mask & batch["tool_mask"].bool() if "tool_mask" in batch else mask


def disable_attention_dropout(model: torch.nn.Module | None) -> None:
    """Set the attention-dropout probability every attention layer keeps (``module.attention_dropout``) to 0."""
    for module in model.modules() if model is not None else ():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
