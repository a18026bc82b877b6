"""``ocr``: text rendering, the quoted text of the prompt against the text an OCR model reads.

Built on RapidOCR (``rapidocr-onnxruntime``), whose wheel bundles PaddleOCR's PP-OCRv4 detection and
recognition models as ONNX files, so it runs offline on the CPU. The score follows Flow-GRPO's
OCR reward: ``1 - min(d, len(target)) / len(target)`` with ``d`` the Levenshtein distance between
the recognised and the target text, and ``d = 0`` when the target appears inside the recognised
text. rapidocr is imported only when the reward is built.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Any, Sequence

import numpy as np
import torch

from .base import Reward
from .errors import RewardConfigError, RewardScoreError
from .registry import register_reward

# Double quotes (straight or curly) first; single quotes only when they stand apart from letters,
# so that the apostrophes of "a cat's sign" never open a span.
_DOUBLE_QUOTED = re.compile(r'"([^"]*)"|“([^”]*)”')
_SINGLE_QUOTED = re.compile(r"(?<!\w)'([^']*)'(?!\w)|‘([^’]*)’")


def normalise_text(text: str) -> str:
    """Text as the OCR reward compares it: NFKC, lower case, every whitespace character removed.

    NFKC maps full-width letters and punctuation (which the bundled Chinese/English recogniser may
    emit) to their ASCII forms; punctuation is otherwise kept.
    """
    return "".join(unicodedata.normalize("NFKC", text).lower().split())


def quoted_text(prompt: str) -> str | None:
    """The text a prompt asks to be rendered: its quoted spans joined by spaces, or None if none.

    Spans in double quotes (``"…"`` or ``“…”``) are used when there are any, else spans in single
    quotes (``'…'`` or ``‘…’``). Empty spans are skipped.
    """
    for pattern in (_DOUBLE_QUOTED, _SINGLE_QUOTED):
        spans = [a or b for a, b in pattern.findall(prompt)]
        spans = [s for s in spans if s.strip()]
        if spans:
            return " ".join(spans)
    return None


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: fewest single-character insertions, deletions and substitutions."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def rendering_score(recognised: str, target: str) -> float:
    """``1 - min(d, len(target)) / len(target)`` on normalised texts, in ``[0, 1]`` (Flow-GRPO's rule).

    ``d`` is the edit distance, or 0 when the target occurs inside the recognised text (extra text
    around the target is not penalised). Raises ValueError when the normalised target is empty.
    """
    recognised, target = normalise_text(recognised), normalise_text(target)
    if not target:
        raise ValueError("the target text is empty after removing whitespace")
    distance = 0 if target in recognised else edit_distance(recognised, target)
    return 1.0 - min(distance, len(target)) / len(target)


_ENGINES: dict[tuple[Any, ...], Any] = {}


def _engine(det_model: str | None, rec_model: str | None, rec_keys: str | None, num_threads: int | None) -> Any:
    """One RapidOCR engine per model set and thread count, shared between rewards."""
    key = (det_model, rec_model, rec_keys, num_threads)
    if key not in _ENGINES:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ImportError as exc:
            raise RewardConfigError(
                "reward 'ocr' needs the rapidocr-onnxruntime package (it bundles the OCR models): "
                'pip install -e ".[ocr]"'
            ) from exc
        options: dict[str, Any] = {"text_score": 0.0}  # the reward applies its own text_score
        paths = {"det_model_path": det_model, "rec_model_path": rec_model, "rec_keys_path": rec_keys}
        options.update({option: path for option, path in paths.items() if path is not None})
        if num_threads is not None:
            options["intra_op_num_threads"] = int(num_threads)
        _ENGINES[key] = RapidOCR(**options)
    return _ENGINES[key]


@register_reward("ocr", threshold=1.0)
class OCRReward(Reward):
    """Text rendering: 1 - normalised edit distance between the prompt's quoted text and the OCR'd text.

    Target: the row's ``text`` metadata value when the prompt set has that column and it is a
    non-empty string, else the quoted spans of the prompt (see :func:`quoted_text`); a row with
    neither is an error naming the prompt. Recognised text: the detected lines read top to
    bottom, left to right, kept when their recognition confidence is at least ``text_score``,
    concatenated. Both are compared after :func:`normalise_text` (case-insensitive, whitespace
    removed, NFKC). Score in ``[0, 1]`` (Flow-GRPO's definition, :func:`rendering_score`); a blank
    picture scores 0. Passed (exact rendering) at 1.0.

    Parameters: ``det_model`` / ``rec_model`` (local ``.onnx`` files replacing the bundled PP-OCRv4
    detector / recogniser; default the bundled ones), ``rec_keys`` (character list file for a
    recogniser whose ONNX file does not embed it), ``text_score`` (0.5, PaddleOCR's default drop
    score), ``num_threads`` (onnxruntime intra-op threads; default onnxruntime's choice),
    ``batch_size``, ``device`` (accepted for uniformity; OCR always runs on the CPU).
    """

    default_batch_size = 16
    path_parameters = ("det_model", "rec_model", "rec_keys")

    def __init__(
        self,
        det_model: str | os.PathLike | None = None,
        rec_model: str | os.PathLike | None = None,
        rec_keys: str | os.PathLike | None = None,
        text_score: float = 0.5,
        num_threads: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        # onnxruntime's CPU build: keep the images on the CPU rather than move them to a GPU and back.
        self.device = torch.device("cpu")
        self.text_score = float(text_score)
        paths = (os.fspath(p) if p is not None else None for p in (det_model, rec_model, rec_keys))
        self.engine = _engine(*paths, num_threads)

    def recognise(self, image: np.ndarray) -> str:
        """Text read in one ``uint8`` RGB ``[H,W,3]`` image, lines concatenated in reading order."""
        bgr = np.ascontiguousarray(image[..., ::-1])  # RapidOCR takes arrays in OpenCV's BGR order
        result, _ = self.engine(bgr, use_cls=False)  # no 180-degree line classifier, as Flow-GRPO
        return "".join(text for _, text, confidence in result or () if float(confidence) >= self.text_score)

    def score_batch(
        self, images: torch.Tensor, prompts: list[str], text: Sequence[Any] | None = None, **metadata: Any
    ) -> torch.Tensor:
        targets = [self._target(prompt, None if text is None else text[i]) for i, prompt in enumerate(prompts)]
        pixels = (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        return torch.tensor([rendering_score(self.recognise(image), target) for image, target in zip(pixels, targets)])

    def _target(self, prompt: str, text: Any) -> str:
        target = text if isinstance(text, str) and text.strip() else quoted_text(prompt)
        if target is None or not normalise_text(target):
            raise RewardScoreError(
                f"reward {self.name!r}: prompt {prompt!r} has no quoted text to render and its row has no "
                "non-empty `text` value; quote the text in the prompt or add a `text` column to the prompt set."
            )
        return target
