"""``ocr``: text rendering, the quoted text of the prompt against the text an OCR model reads.

Built on RapidOCR (``rapidocr-onnxruntime``), whose wheel bundles PaddleOCR's PP-OCRv4 detection and
recognition models as ONNX files, so it runs offline on the CPU. The score follows Flow-GRPO's
OCR reward: ``1 - min(d, len(target)) / len(target)`` with ``d`` the Levenshtein distance between
the recognised and the target text, and ``d = 0`` when the target appears inside the recognised
text. rapidocr is imported only when the reward is built.

Options for small single-line pictures (such as the numbers demo's 96x32 px renderings): read them
with the recogniser alone (``use_det: false``; detection finds no line in a picture that small),
enlarge and soften them first (``upscale``, ``blur``: the palette codec's flat square patches read
better as a smooth blurred enlargement), and score with ``score: edit_similarity`` (partial reads,
``1 - d / max(len)``) or ``score: exact``.
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


def edit_similarity(recognised: str, target: str) -> float:
    """``1 - d / max(len(recognised), len(target))`` on normalised texts, in ``[0, 1]``.

    Unlike :func:`rendering_score`, extra characters around the target cost as much as missing
    ones, so only an exact read scores 1. Two empty texts are identical (1.0).
    """
    recognised, target = normalise_text(recognised), normalise_text(target)
    longest = max(len(recognised), len(target))
    return 1.0 if longest == 0 else 1.0 - edit_distance(recognised, target) / longest


def exact_match(recognised: str, target: str) -> float:
    """1.0 when the normalised texts are equal, else 0.0."""
    return float(normalise_text(recognised) == normalise_text(target))


#: ``score`` option of the reward: how a read is compared with its target.
SCORES = {"flow_grpo": rendering_score, "edit_similarity": edit_similarity, "exact": exact_match}


def prepare_picture(image: np.ndarray, upscale: float = 1.0, blur: float = 0.0) -> np.ndarray:
    """A ``uint8`` ``[H,W,3]`` picture enlarged ``upscale`` times (bicubic), then Gaussian-blurred.

    ``blur`` is the standard deviation in pixels of the enlarged picture (0: none). Identity with
    the defaults.
    """
    import cv2  # installed with rapidocr-onnxruntime

    if upscale != 1.0:
        h, w = image.shape[:2]
        size = (max(1, round(w * upscale)), max(1, round(h * upscale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC)
    if blur > 0:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=float(blur))
    return np.ascontiguousarray(image)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float ``[B,3,H,W]`` images in ``[0,1]`` as ``uint8`` ``[B,H,W,3]`` RGB arrays."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


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
    ``use_det`` (True; False reads the whole picture as one line with the recogniser alone, for
    single-line pictures), ``upscale`` (1.0; bicubic enlargement before reading) and ``blur``
    (0.0; Gaussian sigma in pixels of the enlarged picture), ``score`` (``flow_grpo``, the default
    described above; ``edit_similarity``: ``1 - d / max(len)``, partial reads between 0 and 1 and
    extra text penalised; ``exact``: 1 or 0), ``batch_size``, ``device`` (accepted for uniformity;
    OCR always runs on the CPU).
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
        use_det: bool = True,
        upscale: float = 1.0,
        blur: float = 0.0,
        score: str = "flow_grpo",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        # onnxruntime's CPU build: keep the images on the CPU rather than move them to a GPU and back.
        self.device = torch.device("cpu")
        self.text_score = float(text_score)
        if score not in SCORES:
            raise RewardConfigError(f"reward 'ocr': unknown score {score!r}; use one of {', '.join(SCORES)}")
        if not float(upscale) > 0 or not float(blur) >= 0:
            raise RewardConfigError(
                f"reward 'ocr': upscale must be > 0 and blur >= 0, got upscale={upscale!r}, blur={blur!r}"
            )
        self.use_det, self.upscale, self.blur, self.score = bool(use_det), float(upscale), float(blur), score
        paths = (os.fspath(p) if p is not None else None for p in (det_model, rec_model, rec_keys))
        self.engine = _engine(*paths, num_threads)

    def recognise(self, image: np.ndarray) -> str:
        """Text read in one ``uint8`` RGB ``[H,W,3]`` image, lines concatenated in reading order."""
        return self.read([image])[0]

    def read(self, images: Sequence[np.ndarray]) -> list[str]:
        """Texts read in ``uint8`` RGB ``[H,W,3]`` images, after the reward's upscale and blur."""
        # RapidOCR takes arrays in OpenCV's BGR order.
        pictures = [prepare_picture(np.ascontiguousarray(image[..., ::-1]), self.upscale, self.blur) for image in images]
        if not self.use_det:
            # The recogniser alone, one batch: each picture is one line (what RapidOCR does per crop).
            lines, _ = self.engine.text_rec(pictures)
            return [text if float(confidence) >= self.text_score else "" for text, confidence in lines]
        texts = []
        for picture in pictures:
            result, _ = self.engine(picture, use_cls=False)  # no 180-degree line classifier, as Flow-GRPO
            texts.append("".join(text for _, text, confidence in result or () if float(confidence) >= self.text_score))
        return texts

    def targets(self, prompts: Sequence[str], text: Sequence[Any] | None = None) -> list[str]:
        """Each row's target text (its ``text`` value, else the prompt's quoted spans)."""
        return [self._target(prompt, None if text is None else text[i]) for i, prompt in enumerate(prompts)]

    def score_batch(
        self, images: torch.Tensor, prompts: list[str], text: Sequence[Any] | None = None, **metadata: Any
    ) -> torch.Tensor:
        targets = self.targets(prompts, text)
        read = self.read(to_uint8(images))
        return torch.tensor([SCORES[self.score](texts, target) for texts, target in zip(read, targets)])

    def _target(self, prompt: str, text: Any) -> str:
        target = text if isinstance(text, str) and text.strip() else quoted_text(prompt)
        if target is None or not normalise_text(target):
            raise RewardScoreError(
                f"reward {self.name!r}: prompt {prompt!r} has no quoted text to render and its row has no "
                "non-empty `text` value; quote the text in the prompt or add a `text` column to the prompt set."
            )
        return target
