"""The pretrain/SFT trainer: Hugging Face ``Trainer`` with the visual-slice next-token loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from policies.vocab import VisualVocab

from .loss import next_token_nll_sums
from .metrics import MetricsFileCallback


class EpochSetter(TrainerCallback):
    """Tells the training dataset the epoch, so caption choice and dropping differ between epochs.

    (The Trainer's sampler has its own ``set_epoch``, so accelerate does not forward the epoch to
    the dataset.)
    """

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


class VisualLMTrainer(Trainer):
    """``Trainer`` whose loss is :func:`pretrain_sft.loss.next_token_nll_sums`.

    The loss is normalised by the number of target tokens in the whole accumulated (and, with
    ``average_tokens_across_devices``, cross-rank) batch, as the Trainer counts them from
    ``labels``; so gradient accumulation and padding do not change the per-token weighting.
    Every log (loss, loss_visual, learning rate, eval loss) is also appended to
    ``<output_dir>/metrics.jsonl`` (:class:`pretrain_sft.metrics.MetricsFileCallback`).
    """

    def __init__(self, *args: Any, vocab: VisualVocab, loss_chunk_size: int = 256, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.vocab = vocab
        self.loss_chunk_size = loss_chunk_size
        # Make the Trainer count target tokens per optimiser step (num_items_in_batch) from shifted labels.
        self.model_accepts_loss_kwargs = True
        self._loss_shifts_labels = True
        self._parts = {"visual": 0.0, "visual_count": 0, "text": 0.0, "text_count": 0}
        self.add_callback(MetricsFileCallback(self.args.output_dir))  # metrics.jsonl, as GRPO runs write

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        sums = next_token_nll_sums(
            model, self.vocab, inputs["input_ids"], inputs["attention_mask"], inputs["labels"], self.loss_chunk_size
        )
        if model.training:
            self._accumulate(sums)
        if num_items_in_batch is None:
            loss = sums.total / sums.count.clamp(min=1)
        else:
            loss = sums.total / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages gradients over ranks
        return (loss, {}) if return_outputs else loss

    def _accumulate(self, sums) -> None:
        self._parts["visual"] += float(sums.visual.detach())
        self._parts["visual_count"] += int(sums.visual_count)
        self._parts["text"] += float(sums.text.detach())
        self._parts["text_count"] += int(sums.text_count)

    def _global_parts(self) -> dict[str, float]:
        """The accumulated sums and counts, summed over every process (each rank saw its own batches)."""
        keys = ("visual", "visual_count", "text", "text_count")
        parts = torch.tensor([float(self._parts[k]) for k in keys], dtype=torch.float64, device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            parts = self.accelerator.reduce(parts, reduction="sum")
        return dict(zip(keys, parts.tolist()))

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds ``loss_visual`` (and ``loss_text`` when text is trained): per-token means since the last log, over all
        processes (every rank logs training losses, so the reduction is collective)."""
        if "loss" in logs:
            parts = self._global_parts()
            if parts["visual_count"]:
                logs["loss_visual"] = round(parts["visual"] / parts["visual_count"], 4)
            if parts["text_count"]:
                logs["loss_text"] = round(parts["text"] / parts["text_count"], 4)
            self._parts = dict.fromkeys(self._parts, 0)
        super().log(logs, *args, **kwargs)
