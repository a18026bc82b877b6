"""Watching what GRPO does to the pictures: monitor rewards, group diversity and a fixed held-out set.

- :class:`RolloutWatch` scores the recipe's ``monitor_rewards`` on every training rollout
  (``monitor/<name>/mean|std``; they never enter the advantage: TRL never sees them) and logs the group
  diversity (``diversity/codes``, and ``diversity/embedding`` from an embedding reward's own embeddings).
- :class:`HeldOutMonitor` samples the ``monitor_prompts`` at fixed seeds at step 0, every ``monitor_steps`` and at
  the last step, scores them with the trained and the monitor rewards (``heldout/<name>/mean|std``,
  ``heldout/reward``, ``heldout/diversity/*``) and saves ``monitor/step_<N>.png`` (the first image of each
  prompt, captioned with its rewards: one frame of the report's filmstrip) and ``monitor/step_<N>.json``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback

from policies.generate import image_seeds
from policies.images import captioned_grid, save_png, to_unit
from policies.records import write_json
from rewards.embeddings import ImageEmbeddings

from .diversity import code_diversity, embedding_diversity

MONITOR_DIR = "monitor"
#: Largest side of a filmstrip cell (real-scale images are shrunk so the report stays small).
FILMSTRIP_CELL = 192
#: Columns TRL passes with each row that are not prompt-set metadata.
_NOT_METADATA = ("prompt", "completion", "completion_ids", "images")


def row_metadata(rows: list[dict]) -> dict[str, list]:
    """Prompt-set columns of TRL's input rows, as the reward contract's per-row lists."""
    return {k: [row[k] for row in rows] for k in rows[0] if k not in _NOT_METADATA} if rows else {}


def mean_std(values: torch.Tensor) -> tuple[float, float]:
    """NaN-ignoring mean and (Bessel) standard deviation; NaN where there are too few values."""
    kept = values[~torch.isnan(values)].float()
    mean = float(kept.mean()) if kept.numel() else math.nan
    std = float(kept.std()) if kept.numel() > 1 else math.nan
    return mean, std


def first_embedding_reward(suites) -> ImageEmbeddings | None:
    """The first reward of the suites that keeps image embeddings (clip, hpsv2, pickscore, aesthetic)."""
    for suite in suites:
        for reward in (suite.rewards.values() if suite is not None else ()):
            if isinstance(reward, ImageEmbeddings):
                return reward
    return None


def gather_embeddings(accelerator, reward: ImageEmbeddings | None, rows: int) -> torch.Tensor | None:
    """The reward's embeddings of this batch from every process, or None unless every process has them."""
    embeddings = reward.image_embeddings if reward is not None else None
    ok = embeddings is not None and embeddings.shape[0] == rows
    if accelerator.num_processes > 1:
        ok = bool(accelerator.gather(torch.tensor([ok], device=accelerator.device)).all())
    return accelerator.gather(embeddings.to(accelerator.device)).cpu() if ok else None


class RolloutWatch:
    """Per training rollout: monitor rewards (scored, never optimised) and group diversity."""

    def __init__(self, trained, monitor=None):
        self.monitor = monitor
        self.embedder = first_embedding_reward([trained, monitor])

    def log(self, trainer, rollout, inputs: list[dict]) -> None:
        """Append this generation batch's figures (``rollout``: an :class:`rl.trainer.RolloutBatch`) to the trainer's
        train metrics (averaged at each log)."""
        accelerator, metrics = trainer.accelerator, trainer._metrics["train"]
        device, rows = accelerator.device, len(rollout.prompts)
        if self.monitor is not None:
            scores = self.monitor.evaluate(rollout.images, rollout.prompts, row_metadata(inputs), "drop").values
            for name, values in scores.items():
                mean, std = mean_std(accelerator.gather(values.to(device)).cpu())
                metrics[f"monitor/{name}/mean"].append(mean)
                metrics[f"monitor/{name}/std"].append(std)
        group = trainer.num_generations
        if group > 1:
            metrics["diversity/codes"].append(code_diversity(accelerator.gather(rollout.codes.to(device)), group))
            embeddings = gather_embeddings(accelerator, self.embedder, rows)
            if embeddings is not None:
                metrics["diversity/embedding"].append(embedding_diversity(embeddings, group))


class HeldOutMonitor(TrainerCallback):
    """Samples and scores the held-out prompts at fixed seeds at step 0, every ``monitor_steps`` and at the end."""

    def __init__(self, trainer, table, suites):
        args = trainer.args
        self.trainer, self.suites = trainer, suites
        self.trained = suites[0]
        count = min(args.monitor_num_prompts, len(table))
        rows = [table[i] for i in range(count)]
        self.per_prompt = args.monitor_images_per_prompt
        self.jobs = image_seeds(args.monitor_seed, count, self.per_prompt)  # (prompt, sample, seed) per image
        self.captions = [rows[i]["prompt"] for i, _, _ in self.jobs]
        self.metadata = row_metadata([rows[i] for i, _, _ in self.jobs])
        self.embedder = first_embedding_reward(suites)
        self.every = args.monitor_steps
        self.folder = Path(args.output_dir) / MONITOR_DIR

    # ------------------------------------------------------------------ when
    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:  # a resumed run already has its start
            # A record of its own at step 0; GRPOTrainer.log would flush (and clear) the step's other metrics.
            Trainer.log(self.trainer, self.evaluate(0))

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.every == 0 or step >= state.max_steps:
            for key, value in self.evaluate(step).items():
                self.trainer._metrics["train"][key].append(value)
            control.should_log = True  # the held-out figures land in this step's record
        return control

    # ------------------------------------------------------------------ what
    def evaluate(self, step: int) -> dict[str, float]:
        """Sample, score, save the filmstrip frame (main process) and return the ``heldout/*`` metrics."""
        trainer = self.trainer
        accelerator = trainer.accelerator
        total, world = len(self.jobs), accelerator.num_processes
        share = math.ceil(total / world)
        mine = list(range(accelerator.process_index * share, min(total, (accelerator.process_index + 1) * share)))
        padded = mine + [mine[-1] if mine else 0] * (share - len(mine))  # every process samples `share` rows
        prompts = [self.captions[k] for k in padded]
        rollout, images = trainer.sample_grids(trainer.policy.encode_prompts(prompts), [self.jobs[k][2] for k in padded])
        metadata = {c: [values[k] for k in padded] for c, values in self.metadata.items()}
        scores: dict[str, torch.Tensor] = {}
        for suite in self.suites:
            scores.update(suite.evaluate(images, prompts, metadata, "drop").values)
        device = accelerator.device
        keep = accelerator.gather(torch.tensor([k < len(mine) for k in range(share)], device=device)).cpu()
        names = list(scores)
        table = accelerator.gather(torch.stack([scores[n] for n in names], dim=1).to(device)).cpu()[keep]
        codes = accelerator.gather(rollout.codes.to(device))[keep.to(device)]
        metrics: dict[str, float] = {}
        for j, name in enumerate(names):
            metrics[f"heldout/{name}/mean"], metrics[f"heldout/{name}/std"] = mean_std(table[:, j])
        if self.trained.aggregation == "sum":
            weighted = [w * metrics[f"heldout/{n}/mean"] for n, w in zip(self.trained.names, self.trained.weights)]
            metrics["heldout/reward"] = float(sum(weighted))
        if self.per_prompt > 1:
            metrics["heldout/diversity/codes"] = code_diversity(codes.cpu(), self.per_prompt)
            embeddings = gather_embeddings(accelerator, self.embedder, share)
            if embeddings is not None:
                metrics["heldout/diversity/embedding"] = embedding_diversity(embeddings[keep], self.per_prompt)
        if accelerator.is_main_process:
            self._save(step, codes, table, names, metrics)
        return metrics

    def _save(self, step: int, codes: torch.Tensor, table: torch.Tensor, names: list[str], metrics: dict) -> None:
        """``monitor/step_<N>.json`` (every image's prompt, seed and rewards) and the filmstrip frame PNG."""
        records = [{"prompt": self.captions[k], "sample": sample, "seed": seed,
                    "rewards": {n: None if math.isnan(v) else v for n, v in zip(names, table[k].tolist())}}
                   for k, (_, sample, seed) in enumerate(self.jobs)]
        finite = {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()}
        write_json(self.folder / f"step_{step}.json", {"step": step, "images": records, "metrics": finite})
        firsts = [k for k, (_, sample, _) in enumerate(self.jobs) if sample == 0]
        with torch.no_grad():
            images = to_unit(self.trainer.codec.decode(codes[firsts])).cpu()
        if max(images.shape[-2:]) > FILMSTRIP_CELL:
            images = F.interpolate(images, size=_shrunk(images.shape[-2:]), mode="bilinear", antialias=True)
        captions = [self.captions[k] + " | " + ", ".join(f"{n}={table[k, j]:.3f}" for j, n in enumerate(names))
                    for k in firsts]
        save_png(captioned_grid(images, captions, ncol=len(firsts), caption_lines=6), self.folder / f"step_{step}.png")


def _shrunk(size) -> tuple[int, int]:
    h, w = int(size[0]), int(size[1])
    scale = FILMSTRIP_CELL / max(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))
