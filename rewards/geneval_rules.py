"""GenEval's compositional rules, applied to detections: which constraints a row asks for, which hold.

A row carries GenEval's prompt metadata (``evaluation_metadata.jsonl``)::

    {"tag": "position",
     "include": [{"class": "cat", "count": 1},
                 {"class": "dog", "count": 1, "position": ["left of", 0]}],
     "exclude": [...]}                # optional; GenEval's counting rows have one

``include`` entries are combined with AND: at least ``count`` detections of ``class`` (the most
confident ``count`` of them are the ones checked further); if ``color`` is given, all of those have
that colour; if ``position`` ``[relation, j]`` is given, each of them stands in ``relation`` to every
object matched for ``include[j]`` (which must itself be fully matched). ``exclude`` entries require
fewer than ``count`` detections of ``class``. GenEval makes its counting prompts exact with an
``exclude`` of ``count + 1``; a ``counting`` row without one gets that exclude here, so the count is
exact either way.

This module re-implements those rules from GenEval's description and evaluator (Ghosh et al. 2023,
``evaluation/evaluate_images.py``): confidence threshold 0.3 (0.9 on counting rows), at most 16
objects per class, and the relative-position test on box centres with a margin of 0.1 x the summed
box sizes. It holds no model: detections and crop colours come from the caller.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from .errors import RewardScoreError

#: GenEval's colour names, the classes of its CLIP zero-shot colour classifier.
COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
#: Relations a ``position`` entry may ask for.
RELATIONS = ("left of", "right of", "above", "below")
#: GenEval's prompt categories (``tag``); only ``counting`` changes a rule (its confidence threshold).
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Detection:
    """One detected object: ``box`` is ``(x0, y0, x1, y1)`` in pixels, ``score`` the detector confidence."""

    box: Box
    score: float


@dataclass(frozen=True)
class Requirement:
    """One ``include`` or ``exclude`` entry of a row."""

    cls: str
    count: int
    color: str | None = None
    position: tuple[str, int] | None = None


@dataclass(frozen=True)
class RowSpec:
    """A row's metadata, checked: its tag and its include / exclude requirements."""

    tag: str
    include: tuple[Requirement, ...]
    exclude: tuple[Requirement, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        """Distinct class names the row mentions, in order of first mention."""
        return tuple(dict.fromkeys(r.cls for r in self.include + self.exclude))

    @property
    def needs_color(self) -> bool:
        return any(r.color is not None for r in self.include)


@dataclass(frozen=True)
class Check:
    """The verdict on one constraint: ``kind`` is ``count``, ``color``, ``position`` or ``exclude``."""

    kind: str
    cls: str
    passed: bool
    reason: str


# ------------------------------------------------------------------ metadata
def _entries(value: Any, field: str) -> list[Mapping[str, Any]]:
    if isinstance(value, str):  # a prompt table may hold the list as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RewardScoreError(f"GenEval metadata {field!r} is text but not JSON: {exc}") from exc
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(e, Mapping) for e in value):
        raise RewardScoreError(
            f"GenEval metadata {field!r} must be a list of {{class, count, ...}} mappings, got {value!r}"
        )
    return list(value)


def _count(entry: Mapping[str, Any], field: str) -> int:
    count = entry.get("count")
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise RewardScoreError(f"GenEval metadata {field} entry {dict(entry)!r} needs an integer 'count' >= 1")
    return count


def _class(entry: Mapping[str, Any], field: str) -> str:
    cls = entry.get("class")
    if not isinstance(cls, str) or not cls.strip():
        raise RewardScoreError(f"GenEval metadata {field} entry {dict(entry)!r} needs a 'class' name")
    return cls


def _position(value: Any, index: int, entry: Mapping[str, Any]) -> tuple[str, int] | None:
    if value is None:
        return None
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and value[0] in RELATIONS
    target = value[1] if ok else None
    if not ok or not isinstance(target, int) or isinstance(target, bool) or not 0 <= target < index:
        raise RewardScoreError(
            f"GenEval metadata include[{index}] {dict(entry)!r}: 'position' must be [relation, j] with relation in "
            f"{list(RELATIONS)} and j the index of an earlier include entry"
        )
    return value[0], target


def parse_row(tag: Any, include: Any, exclude: Any = None) -> RowSpec:
    """Check one row's ``tag`` / ``include`` / ``exclude`` and return them as a :class:`RowSpec`.

    ``include`` / ``exclude`` are lists of mappings (or that list as JSON text); absent optional keys
    may be missing or ``None``. A ``counting`` row gets ``exclude {class, count + 1}`` for each include
    class that has no exclude entry. Raises :class:`RewardScoreError` naming what is wrong.
    """
    if tag not in TAGS:
        raise RewardScoreError(f"GenEval metadata 'tag' must be one of {list(TAGS)}, got {tag!r}")
    includes = []
    for i, entry in enumerate(_entries(include, "include")):
        color = entry.get("color")
        if color is not None and color not in COLORS:
            raise RewardScoreError(
                f"GenEval metadata include[{i}] {dict(entry)!r}: 'color' must be one of {list(COLORS)}"
            )
        position = _position(entry.get("position"), i, entry)
        includes.append(Requirement(_class(entry, "include"), _count(entry, "include"), color, position))
    if not includes:
        raise RewardScoreError(f"GenEval metadata row (tag {tag!r}) has no 'include' entries, so nothing to check")
    excludes = [Requirement(_class(e, "exclude"), _count(e, "exclude")) for e in _entries(exclude, "exclude")]
    if tag == "counting":
        excluded = {r.cls for r in excludes}
        excludes += [Requirement(r.cls, r.count + 1) for r in includes if r.cls not in excluded]
    return RowSpec(tag, tuple(includes), tuple(excludes))


# ---------------------------------------------------------------- detections
def confidence_for(tag: str, confidence: float, counting_confidence: float) -> float:
    """The detection threshold GenEval applies to a row: ``counting_confidence`` on counting rows."""
    return counting_confidence if tag == "counting" else confidence


def select_detections(
    boxes: torch.Tensor, scores: torch.Tensor, threshold: float, max_objects: int, max_overlap: float
) -> list[Detection]:
    """The detections of one class that count: score above ``threshold``, most confident first.

    A box overlapping a more confident kept box by IoU above ``max_overlap`` is dropped (``>= 1``
    keeps every box, GenEval's setting for Mask2Former); at most ``max_objects`` are kept.
    GenEval caps before suppressing; here suppression comes first, because a patch-based detector
    proposes many near-identical boxes per object and the cap would otherwise hold duplicates.
    """
    from torchvision.ops import nms

    boxes, scores = boxes.float().reshape(-1, 4), scores.float().reshape(-1)
    keep = scores > threshold
    boxes, scores = boxes[keep], scores[keep]
    if max_overlap < 1:
        order = nms(boxes, scores, float(max_overlap))
    else:
        order = torch.argsort(scores, descending=True, stable=True)
    order = order[: max(int(max_objects), 0)]
    return [Detection(tuple(boxes[k].tolist()), float(scores[k])) for k in order]


def relative_position(box_a: Sequence[float], box_b: Sequence[float], margin: float = 0.1) -> set[str]:
    """Relations of box A to box B (``"left of"``, ``"right of"``, ``"above"``, ``"below"``; image y down).

    GenEval's rule: the centre offset along each axis is shrunk towards zero by ``margin`` x the sum
    of the two boxes' sizes on that axis; a relation holds when the shrunk offset, divided by the
    length of the unshrunk offset vector, is beyond 0.5 in its direction. Boxes whose shrunk offset
    vanishes stand in no relation.
    """
    offset, revised = [], []
    for axis in (0, 1):
        centre_a = (box_a[axis] + box_a[axis + 2]) / 2
        centre_b = (box_b[axis] + box_b[axis + 2]) / 2
        size = abs(box_a[axis + 2] - box_a[axis]) + abs(box_b[axis + 2] - box_b[axis])
        delta = centre_a - centre_b
        offset.append(delta)
        revised.append(math.copysign(max(abs(delta) - margin * size, 0.0), delta))
    if all(abs(r) < 1e-3 for r in revised):
        return set()
    dx, dy = (r / math.hypot(*offset) for r in revised)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


# --------------------------------------------------------------------- rules
def evaluate_row(
    spec: RowSpec,
    detections: Mapping[str, Sequence[Detection]],
    colors_of: Callable[[str, Sequence[Detection]], Sequence[str]] | None = None,
    margin: float = 0.1,
) -> list[Check]:
    """Every constraint of ``spec`` judged on ``detections`` (per class, most confident first).

    ``colors_of(cls, objects)`` names the colour of each object (needed only for colour entries).
    A colour or position entry whose objects were not all found fails unchecked, as in GenEval; a
    position target counts only if its own entry matched completely.
    """
    checks: list[Check] = []
    matched: list[Sequence[Detection] | None] = []
    for req in spec.include:
        found = list(detections.get(req.cls, ()))[: req.count]
        ok = len(found) >= req.count
        checks.append(Check("count", req.cls, ok, f"expected {req.cls}>={req.count}, found {len(found)}"))
        if req.color is not None:
            if not ok:
                checks.append(Check("color", req.cls, False, f"{req.color} {req.cls} not checked: too few {req.cls}"))
            else:
                if colors_of is None:
                    raise RewardScoreError(f"a colour constraint ({req.color} {req.cls}) needs a colour classifier")
                colors = list(colors_of(req.cls, found))
                hits = colors.count(req.color)
                ok = hits >= req.count
                reason = f"expected {req.color} {req.cls}>={req.count}, found colours {colors}"
                checks.append(Check("color", req.cls, ok, reason))
        if req.position is not None:
            relation, target = req.position
            targets = matched[target]
            if not ok:
                reason = f"{req.cls} {relation} target not checked: {req.cls} not matched"
                checks.append(Check("position", req.cls, False, reason))
            elif targets is None:
                ok = False
                checks.append(Check("position", req.cls, False, f"no matched target for {req.cls} to be {relation}"))
            else:
                found_relations = [relative_position(o.box, t.box, margin) for o in found for t in targets]
                ok = all(relation in r for r in found_relations)
                seen = sorted(set().union(*found_relations)) or ["no relation"]
                checks.append(Check("position", req.cls, ok, f"expected {req.cls} {relation} target, found {seen}"))
        matched.append(found if ok else None)
    for req in spec.exclude:
        n = len(detections.get(req.cls, ()))
        checks.append(Check("exclude", req.cls, n < req.count, f"expected {req.cls}<{req.count}, found {n}"))
    return checks


def row_score(checks: Sequence[Check], strict: bool = False) -> float:
    """Fraction of constraints that hold; with ``strict``, 1.0 only if all hold (GenEval's correctness)."""
    if not checks:
        raise RewardScoreError("a GenEval row has no constraints to score")
    passed = sum(c.passed for c in checks)
    if strict:
        return float(passed == len(checks))
    return passed / len(checks)
