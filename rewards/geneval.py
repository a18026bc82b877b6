"""``geneval``: GenEval-style compositional reward from an OWLv2 open-vocabulary detector.

The rules (counting, colour, relative position, thresholds) are GenEval's, in
:mod:`rewards.geneval_rules`; this module supplies the detections and the crop colours:

- **Detector.** An OWLv2 folder (``Owlv2ForObjectDetection`` + ``Owlv2Processor``, e.g.
  ``google/owlv2-base-patch16-ensemble`` saved locally), loaded through transformers'
  ``AutoModelForZeroShotObjectDetection``, once per (folder, device, dtype). Each row queries its own
  classes (plus ``extra_classes``) as ``query_template`` texts; every proposed box is labelled with
  its best-scoring query, so queried classes compete for a box as in a closed-set detector.
- **Colour.** GenEval's CLIP zero-shot classifier over its ten colours: each detected box is cropped
  and classified by an open_clip model (``clip_checkpoint``, ``clip_arch``; GenEval uses ViT-L-14
  OpenAI weights) against three templates per colour, averaged.

GenEval itself scores with an mmdetection Mask2Former (COCO classes) and masks the background of a
crop before classifying its colour. This reward uses another detector, no masks and, by default,
suppresses overlapping boxes, so its numbers approximate GenEval's and are not GenEval scores.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .base import Reward, resolve_dtype
from .errors import RewardCheckpointError, RewardConfigError, RewardScoreError
from .geneval_rules import (
    COLORS,
    Check,
    Detection,
    RowSpec,
    confidence_for,
    evaluate_row,
    parse_row,
    row_score,
    select_detections,
)
from .openclip_models import LoadedCLIP, load_openclip
from .preprocess import openclip_eval_transform
from .registry import register_reward

#: GenEval's prompt templates for the colour of an object of class ``cls``.
COLOR_TEMPLATES = ("a photo of a {color} {cls}", "a photo of a {color}-colored {cls}", "a photo of a {color} object")


# ------------------------------------------------------------------ detector
@dataclass(frozen=True)
class LoadedDetector:
    """An OWLv2 model and its processor, in eval mode and without gradients."""

    model: torch.nn.Module
    processor: Any
    device: torch.device
    dtype: torch.dtype


_DETECTORS: dict[tuple[str, str, torch.dtype], LoadedDetector] = {}


def clear_detector_cache() -> None:
    """Forget every loaded detector (freed once no reward holds it)."""
    _DETECTORS.clear()


def load_owlv2(folder: str | os.PathLike, *, device: torch.device, dtype: torch.dtype) -> LoadedDetector:
    """The OWLv2 model and processor saved in ``folder`` (local files only), shared between callers.

    Raises :class:`RewardCheckpointError` naming the folder when it is missing, is not an OWLv2
    model, or cannot be loaded.
    """
    path = os.path.realpath(folder)
    key = (path, str(device), dtype)
    if key not in _DETECTORS:
        _DETECTORS[key] = _load_owlv2(path, device, dtype)
    return _DETECTORS[key]


def _load_owlv2(path: str, device: torch.device, dtype: torch.dtype) -> LoadedDetector:
    if not os.path.isfile(os.path.join(path, "config.json")):
        problem = "has no config.json" if os.path.isdir(path) else "does not exist"
        raise RewardCheckpointError(
            f"reward 'geneval': checkpoint folder {path} {problem}. Give the local folder of an OWLv2 model saved with "
            "save_pretrained (e.g. google/owlv2-base-patch16-ensemble: config.json, weights and processor files)."
        )
    from transformers import AutoConfig, AutoModelForZeroShotObjectDetection, AutoProcessor

    try:
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        if model_type != "owlv2":
            raise RewardCheckpointError(
                f"reward 'geneval': {path} holds a {model_type!r} model; this reward reads OWLv2 detectors "
                "(model_type 'owlv2')"
            )
        processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = AutoModelForZeroShotObjectDetection.from_pretrained(path, local_files_only=True, dtype=dtype)
    except RewardCheckpointError:
        raise
    except Exception as exc:
        raise RewardCheckpointError(
            f"reward 'geneval': cannot load the OWLv2 detector in {path}: {type(exc).__name__}: {exc}"
        ) from exc
    model = model.to(device).eval().requires_grad_(False)
    return LoadedDetector(model=model, processor=processor, device=device, dtype=dtype)


def detect(
    detector: LoadedDetector, images: torch.Tensor, queries: Sequence[Sequence[str]]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image: ``(probs [P, Q_i], boxes [P, 4])`` for its own ``Q_i`` query texts.

    ``boxes`` are ``(x0, y0, x1, y1)`` pixels of the image (OWLv2 predicts them on the image padded
    to a square at its bottom / right), ``probs`` the sigmoid of the query logits. Rows with fewer
    queries are padded with all-zero token ids, which OWLv2 masks out, so a row's result does not
    depend on the other rows of the batch.
    """
    tokenizer = detector.processor.tokenizer
    unique = list(dict.fromkeys(q for row in queries for q in row))
    # OWLv2 encodes queries at a fixed length (16 tokens for the released checkpoints).
    length = detector.model.config.text_config.max_position_embeddings
    text = tokenizer(unique, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    width = max(len(row) for row in queries)
    input_ids = torch.zeros(len(queries), width, length, dtype=torch.long)
    attention = torch.zeros(len(queries), width, length, dtype=torch.long)
    attention[..., 0] = 1  # padded queries attend to one token, so their (masked) embedding stays finite
    for i, row in enumerate(queries):
        index = torch.tensor([unique.index(q) for q in row], dtype=torch.long)
        input_ids[i, : len(row)] = text["input_ids"][index]
        attention[i, : len(row)] = text["attention_mask"][index]
    pixels = detector.processor.image_processor(
        images=list(images.float()), do_rescale=False, return_tensors="pt"
    )["pixel_values"]
    out = detector.model(
        input_ids=input_ids.flatten(0, 1).to(detector.device),
        attention_mask=attention.flatten(0, 1).to(detector.device),
        pixel_values=pixels.to(detector.device, detector.dtype),
    )
    height, width_px = images.shape[-2:]
    side = max(height, width_px)
    centre, size = out.pred_boxes.float()[..., :2], out.pred_boxes.float()[..., 2:]
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=-1) * side
    boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([width_px, height, width_px, height], device=boxes.device))
    probs = out.logits.float().sigmoid()
    return [(probs[i, :, : len(row)].cpu(), boxes[i].cpu()) for i, row in enumerate(queries)]


# -------------------------------------------------------------------- colour
class ColorClassifier:
    """GenEval's colour classifier: CLIP zero-shot over :data:`COLORS` on the crop of each box."""

    def __init__(self, clip: LoadedCLIP):
        self.clip = clip
        self._transform = openclip_eval_transform(clip.preprocess_cfg)
        self._weights: dict[str, torch.Tensor] = {}

    def _class_weights(self, cls: str) -> torch.Tensor:
        if cls not in self._weights:
            texts = [t.format(color=c, cls=cls) for c in COLORS for t in COLOR_TEMPLATES]
            tokens = self.clip.tokenizer(texts).to(self.clip.device)
            text = F.normalize(self.clip.model.encode_text(tokens).float(), dim=-1)
            text = text.view(len(COLORS), len(COLOR_TEMPLATES), -1).mean(dim=1)
            self._weights[cls] = F.normalize(text, dim=-1)
        return self._weights[cls]

    def colors(self, image: torch.Tensor, cls: str, objects: Sequence[Detection]) -> list[str]:
        """The colour name of each object of class ``cls`` in ``image`` (``[3,H,W]`` in ``[0,1]``)."""
        height, width = image.shape[-2:]
        crops = []
        for obj in objects:
            x0, y0, x1, y1 = obj.box
            c0, r0 = min(int(x0), width - 1), min(int(y0), height - 1)
            c1, r1 = max(min(math.ceil(x1), width), c0 + 1), max(min(math.ceil(y1), height), r0 + 1)
            crops.append(self._transform(image[None, :, r0:r1, c0:c1]))
        pixels = torch.cat(crops).to(self.clip.device, self.clip.dtype)
        features = F.normalize(self.clip.model.encode_image(pixels).float(), dim=-1)
        return [COLORS[k] for k in (features @ self._class_weights(cls).T).argmax(dim=-1).tolist()]


# -------------------------------------------------------------------- reward
@register_reward("geneval", required_fields=["tag", "include"], threshold=1.0)
class GenEvalReward(Reward):
    """GenEval-style compositional score from OWLv2 detections (an approximation, not GenEval numbers).

    Reads GenEval's prompt metadata: ``tag`` and ``include`` (``[{class, count, color, position}]``;
    ``exclude`` too when the prompt set has it). Score: the fraction of constraints that hold (each
    include's count, its colour, its position; each exclude), or with ``strict`` 1/0 for all of them
    (GenEval's correctness). Passed at 1.0.

    Parameters: ``checkpoint`` (required: local OWLv2 folder), ``clip_checkpoint`` (open_clip weights
    file for colour rows; without it a colour row is an error), ``clip_arch`` (``ViT-L-14``),
    ``confidence_threshold`` (0.3) and ``counting_threshold`` (0.9; GenEval's values, tuned for
    Mask2Former), ``max_objects`` (16 per class), ``max_overlap`` (0.5: IoU above which a less
    confident box of the same class is dropped; GenEval's 1.0 would count OWLv2's duplicate boxes),
    ``position_margin`` (0.1), ``query_template`` (``"a photo of a {}"``), ``extra_classes``
    (more class names to query so they compete for boxes, e.g. the 80 COCO names), ``strict``,
    ``dtype``, ``batch_size`` (8), ``device``.
    """

    default_batch_size = 8
    path_parameters = ("clip_checkpoint",)

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        clip_checkpoint: str | os.PathLike | None = None,
        clip_arch: str = "ViT-L-14",
        confidence_threshold: float = 0.3,
        counting_threshold: float = 0.9,
        max_objects: int = 16,
        max_overlap: float = 0.5,
        position_margin: float = 0.1,
        query_template: str = "a photo of a {}",
        extra_classes: Sequence[str] | None = None,
        strict: bool = False,
        dtype: torch.dtype | str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if "{}" not in query_template:
            raise RewardConfigError(
                f"reward 'geneval': query_template must contain '{{}}' for the class name, got {query_template!r}"
            )
        if isinstance(extra_classes, str):
            raise RewardConfigError(
                f"reward 'geneval': extra_classes must be a list of class names, got {extra_classes!r}"
            )
        if int(max_objects) < 1:
            raise RewardConfigError(f"reward 'geneval': max_objects must be >= 1, got {max_objects}")
        self.checkpoint = os.fspath(checkpoint)
        self.confidence_threshold = float(confidence_threshold)
        self.counting_threshold = float(counting_threshold)
        self.max_objects = int(max_objects)
        self.max_overlap = float(max_overlap)
        self.position_margin = float(position_margin)
        self.query_template = query_template
        self.extra_classes = tuple(extra_classes or ())
        self.strict = bool(strict)
        dtype = resolve_dtype(dtype)
        self.detector = load_owlv2(self.checkpoint, device=self.device, dtype=dtype)
        self.colors = None
        if clip_checkpoint is not None:
            clip = load_openclip(clip_arch, os.fspath(clip_checkpoint), device=self.device, dtype=dtype)
            self.colors = ColorClassifier(clip)

    def check(
        self, images: torch.Tensor, tag: Sequence[Any], include: Sequence[Any], exclude: Sequence[Any] | None = None
    ) -> list[list[Check]]:
        """Every constraint of every row judged on its image, with a reason each (for inspection)."""
        specs = [parse_row(t, inc, exc) for t, inc, exc in zip(tag, include, exclude or [None] * len(tag))]
        if self.colors is None and any(s.needs_color for s in specs):
            raise RewardConfigError(
                "reward 'geneval': a prompt has a colour constraint but no clip_checkpoint is set; set "
                "`clip_checkpoint:` to open_clip weights (GenEval uses ViT-L-14 OpenAI, with clip_arch: ViT-L-14)"
            )
        found = self.detections(images, specs)
        return [
            evaluate_row(spec, dets, self._colors_of(image), self.position_margin)
            for spec, dets, image in zip(specs, found, images)
        ]

    def detections(self, images: torch.Tensor, specs: Sequence[RowSpec]) -> list[dict[str, list[Detection]]]:
        """Per row, the detections of each class it mentions that count under GenEval's thresholds."""
        classes = [list(dict.fromkeys(spec.classes + self.extra_classes)) for spec in specs]
        raw = detect(self.detector, images, [[self.query_template.format(c) for c in row] for row in classes])
        found = []
        for spec, (probs, boxes) in zip(specs, raw):
            score, label = probs.max(dim=-1)
            threshold = confidence_for(spec.tag, self.confidence_threshold, self.counting_threshold)
            keep = (self.max_objects, self.max_overlap)
            found.append({
                cls: select_detections(boxes[label == q], score[label == q], threshold, *keep)
                for q, cls in enumerate(spec.classes)
            })
        return found

    def _colors_of(self, image: torch.Tensor):
        if self.colors is None:
            return None
        return lambda cls, objects: self.colors.colors(image, cls, objects)

    def score_batch(self, images: torch.Tensor, prompts: list[str], **metadata: Any) -> torch.Tensor:
        for field in self.required_fields:
            if field not in metadata:
                raise RewardScoreError(f"reward {self.name!r} needs the GenEval metadata column {field!r}")
        checks = self.check(images, metadata["tag"], metadata["include"], metadata.get("exclude"))
        return torch.tensor([row_score(c, self.strict) for c in checks], dtype=torch.float32)
