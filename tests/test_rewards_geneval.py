"""``geneval``: GenEval's rules on hand-made detections, and the OWLv2 + open_clip path end to end."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from PIL import Image
from rewards_helpers import TINY_ARCH, tiny_weights  # noqa: F401  (fixture)

from rewards import RewardCheckpointError, RewardConfigError, RewardScoreError, build_rewards, cli
from rewards.geneval import clear_detector_cache
from rewards.geneval_rules import (
    COLORS,
    Detection,
    confidence_for,
    evaluate_row,
    parse_row,
    relative_position,
    row_score,
    select_detections,
)


def det(x0, y0, x1, y1, score=0.9) -> Detection:
    return Detection((float(x0), float(y0), float(x1), float(y1)), score)


def judge(tag, include, detections, exclude=None, colors_of=None, strict=False):
    """(score, [(kind, passed)]) of one row on hand-made detections."""
    checks = evaluate_row(parse_row(tag, include, exclude), detections, colors_of)
    return row_score(checks, strict), [(c.kind, c.passed) for c in checks]


# ------------------------------------------------------------------- rules by tag
def test_single_object_needs_one_detection_of_its_class():
    include = [{"class": "bench", "count": 1}]
    assert judge("single_object", include, {"bench": [det(0, 0, 10, 10)]}) == (1.0, [("count", True)])
    assert judge("single_object", include, {"dog": [det(0, 0, 10, 10)]}) == (0.0, [("count", False)])


def test_two_object_scores_the_fraction_found_and_strict_is_all_or_nothing():
    include = [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}]
    both = {"cat": [det(0, 0, 5, 5)], "dog": [det(5, 5, 9, 9)]}
    assert judge("two_object", include, both)[0] == 1.0
    assert judge("two_object", include, {"cat": both["cat"]}) == (0.5, [("count", True), ("count", False)])
    assert judge("two_object", include, {"cat": both["cat"]}, strict=True)[0] == 0.0
    assert judge("two_object", include, both, strict=True)[0] == 1.0


def test_counting_requires_the_exact_count_with_or_without_genevals_exclude():
    include = [{"class": "clock", "count": 3}]
    explicit = [{"class": "clock", "count": 4}]
    for n, expected in ((3, 1.0), (2, 0.5), (4, 0.5), (0, 0.5)):
        clocks = {"clock": [det(10 * i, 0, 10 * i + 8, 8) for i in range(n)]}
        with_exclude = judge("counting", include, clocks, exclude=explicit)
        assert with_exclude == judge("counting", include, clocks)  # the implicit exclude is GenEval's
        assert with_exclude[0] == expected, n
    # Outside counting rows a count is a lower bound, as GenEval's include is.
    many = {"clock": [det(10 * i, 0, 10 * i + 8, 8) for i in range(5)]}
    assert judge("two_object", [{"class": "clock", "count": 3}, {"class": "cup", "count": 1}], many)[1] == [
        ("count", True), ("count", False)]
    assert confidence_for("counting", 0.3, 0.9) == 0.9 and confidence_for("colors", 0.3, 0.9) == 0.3


def _colour_by_left_edge(cls, objects):
    # Hand-made "classifier": objects starting left of x=50 are red, the others blue.
    return ["red" if o.box[0] < 50 else "blue" for o in objects]


def test_colors_checks_the_colour_of_the_found_objects_only_when_they_were_found():
    include = [{"class": "car", "count": 1, "color": "red"}]
    assert judge("colors", include, {"car": [det(0, 0, 20, 20)]}, colors_of=_colour_by_left_edge) == (
        1.0, [("count", True), ("color", True)])
    assert judge("colors", include, {"car": [det(60, 0, 90, 20)]}, colors_of=_colour_by_left_edge)[0] == 0.5
    asked = []
    score, checks = judge("colors", include, {}, colors_of=lambda cls, objs: asked.append(cls) or [])
    assert (score, checks, asked) == (0.0, [("count", False), ("color", False)], [])
    # Only the most confident `count` objects are checked: a less confident blue car does not matter.
    cars = {"car": [det(0, 0, 20, 20, 0.9), det(60, 0, 90, 20, 0.5)]}
    assert judge("colors", include, cars, colors_of=_colour_by_left_edge)[0] == 1.0


def test_color_attr_judges_each_object_and_its_colour():
    include = [{"class": "car", "count": 1, "color": "red"}, {"class": "bus", "count": 1, "color": "blue"}]
    right = {"car": [det(0, 0, 20, 20)], "bus": [det(60, 0, 90, 20)]}
    swapped = {"car": [det(60, 0, 90, 20)], "bus": [det(0, 0, 20, 20)]}
    assert judge("color_attr", include, right, colors_of=_colour_by_left_edge)[0] == 1.0
    assert judge("color_attr", include, swapped, colors_of=_colour_by_left_edge) == (
        0.5, [("count", True), ("color", False), ("count", True), ("color", False)])
    with pytest.raises(RewardScoreError, match="colour classifier"):
        judge("color_attr", include, right)


def test_position_relates_each_object_to_its_matched_target():
    include = [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}]
    cat = [det(60, 40, 80, 60)]
    assert judge("position", include, {"cat": cat, "dog": [det(0, 40, 20, 60)]}) == (
        1.0, [("count", True), ("count", True), ("position", True)])
    assert judge("position", include, {"cat": cat, "dog": [det(90, 40, 99, 60)]})[1][2] == ("position", False)
    # No cat: the dog is found but has no target, so the position fails too.
    assert judge("position", include, {"dog": [det(0, 40, 20, 60)]}) == (
        1 / 3, [("count", False), ("count", True), ("position", False)])
    # Every object of the entry must stand in the relation, not just one of them.
    two_dogs = [{"class": "cat", "count": 1}, {"class": "dog", "count": 2, "position": ["left of", 0]}]
    assert judge("position", two_dogs, {"cat": cat, "dog": [det(0, 40, 20, 60), det(30, 40, 50, 60)]})[0] == 1.0
    assert judge("position", two_dogs, {"cat": cat, "dog": [det(0, 40, 20, 60), det(90, 40, 99, 60)]})[0] == 2 / 3
    below = [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["below", 0]}]
    assert judge("position", below, {"cat": [det(40, 0, 60, 20)], "dog": [det(40, 70, 60, 90)]})[0] == 1.0


def test_position_margin_is_a_tenth_of_the_summed_box_sizes():
    # Two 10-px boxes side by side: the margin is 0.1 * (10 + 10) = 2 px, so an offset d counts as
    # (d - 2) / d of its length; "left of" needs more than 0.5, i.e. d > 4.
    def b_box(d):
        return (5 + d - 5, 0.0, 5 + d + 5, 10.0)

    a = (0.0, 0.0, 10.0, 10.0)
    assert relative_position(a, b_box(4.0)) == set()
    assert relative_position(a, b_box(4.1)) == {"left of"}
    assert relative_position(b_box(4.1), a) == {"right of"}
    assert relative_position(a, b_box(2.0)) == set()  # within the margin: no relation at all
    assert relative_position(a, b_box(4.1), margin=0.0) == {"left of"}
    assert relative_position(a, b_box(3.0), margin=0.0) == {"left of"}  # no margin: any offset
    assert relative_position(a, (20.0, 20.0, 30.0, 30.0)) == {"left of", "above"}  # diagonal: both


def test_select_detections_thresholds_suppresses_duplicates_and_caps():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60], [80, 80, 90, 90]], dtype=torch.float32)
    scores = torch.tensor([0.8, 0.7, 0.3, 0.6])
    kept = select_detections(boxes, scores, threshold=0.3, max_objects=16, max_overlap=0.5)
    assert [d.score for d in kept] == pytest.approx([0.8, 0.6])  # 0.3 is not above 0.3; box 1 overlaps box 0
    assert len(select_detections(boxes, scores, 0.3, 16, max_overlap=1.0)) == 3  # GenEval's setting: no suppression
    assert [d.box for d in select_detections(boxes, scores, 0.0, 1, 0.5)] == [(0.0, 0.0, 10.0, 10.0)]


def test_metadata_is_checked_and_accepted_in_table_and_json_forms():
    spec = parse_row("position", json.dumps([{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["above", 0]}]))
    assert spec.include[1].position == ("above", 0) and spec.classes == ("cat", "dog")
    # A datasets table fills absent keys with None.
    assert parse_row("colors", [{"class": "car", "count": 1, "color": None, "position": None}], None).include[0].color is None
    for tag, include, match in (
        ("count", [{"class": "cat", "count": 1}], "tag"),
        ("colors", [{"class": "cat", "count": 1, "color": "teal"}], "color"),
        ("position", [{"class": "cat", "count": 1, "position": ["left of", 0]}], "earlier include"),
        ("counting", [{"class": "cat", "count": 0}], "count"),
        ("single_object", [], "no 'include'"),
    ):
        with pytest.raises(RewardScoreError, match=match):
            parse_row(tag, include)


# ---------------------------------------------------------------- OWLv2 end to end
def save_tiny_owlv2(folder) -> int:
    """A random OWLv2 (64 px input, 16 px patches) with an offline CLIP BPE tokenizer; returns its box count."""
    from transformers import CLIPTokenizer, Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessor, Owlv2Processor
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = {s: i for i, s in enumerate(symbols)} | {s + "</w>": i + len(symbols) for i, s in enumerate(symbols)}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"), pad_token="!")
    processor = Owlv2Processor(image_processor=Owlv2ImageProcessor(size={"height": 64, "width": 64}), tokenizer=tokenizer)
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = Owlv2Config(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=16, bos_token_id=len(vocab) - 2,
                         eos_token_id=len(vocab) - 1, pad_token_id=0, **layers),
        vision_config=dict(image_size=64, patch_size=16, **layers),
        projection_dim=32,
    )
    torch.manual_seed(0)
    Owlv2ForObjectDetection(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return (64 // 16) ** 2


@pytest.fixture(scope="module")
def owlv2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_owlv2")
    boxes = save_tiny_owlv2(folder)
    yield folder, boxes
    clear_detector_cache()


def _images(n: int, size: int = 48) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(n))


ROWS = [
    ("a photo of a bench", "single_object", [{"class": "bench", "count": 1}], None),
    ("a photo of a cat and a dog", "two_object", [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}], None),
    ("a photo of two clocks", "counting", [{"class": "clock", "count": 2}], [{"class": "clock", "count": 3}]),
    ("a photo of a dog left of a cat", "position",
     [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}], None),
]


def _score(suite, images, rows=ROWS):
    prompts, tags, includes, excludes = map(list, zip(*rows))
    return suite.score(images, prompts, tag=tags, include=includes, exclude=excludes)["geneval"]


def test_scores_are_fractions_deterministic_and_independent_of_the_batch(owlv2):
    folder, _ = owlv2
    images = _images(len(ROWS))
    suite = build_rewards([{"name": "geneval", "checkpoint": str(folder)}])
    scores = _score(suite, images)
    assert scores.shape == (len(ROWS),) and scores.dtype == torch.float32
    assert ((scores >= 0) & (scores <= 1)).all()
    assert torch.equal(scores, _score(suite, images))
    one_by_one = build_rewards([{"name": "geneval", "checkpoint": str(folder), "batch_size": 1, "as": "g1"}])
    prompts, tags, includes, excludes = map(list, zip(*ROWS))
    alone = one_by_one.score(images, prompts, tag=tags, include=includes, exclude=excludes)["g1"]
    assert torch.equal(scores, alone)  # rows with 1 and 2 queries padded together score as alone
    strict = build_rewards([{"name": "geneval", "checkpoint": str(folder), "strict": True}])
    assert torch.equal(_score(strict, images), (scores == 1.0).float())


def test_thresholds_decide_what_is_detected_and_the_rules_follow(owlv2):
    folder, boxes = owlv2
    images = _images(len(ROWS))
    keep_all = {"confidence_threshold": 0.0, "counting_threshold": 0.0, "max_overlap": 1.0, "max_objects": 100}
    everything = build_rewards([{"name": "geneval", "checkpoint": str(folder), **keep_all}]).rewards["geneval"]
    specs = [parse_row(tag, inc, exc) for _, tag, inc, exc in ROWS]
    found = everything.detections(images, specs)
    # At threshold 0 every proposed box counts, labelled with its best query: one-class rows get
    # all of them, and the two classes of a row share them.
    assert [len(found[0]["bench"]), len(found[2]["clock"])] == [boxes, boxes]
    assert len(found[1]["cat"]) + len(found[1]["dog"]) == boxes
    # Counting: all boxes are clocks, so two clocks are too many (count passes, exclude fails) ...
    assert _score(build_rewards([{"name": "geneval", "checkpoint": str(folder), **keep_all}]), images)[[0, 2]].tolist() == [1.0, 0.5]
    exact = [("sixteen clocks", "counting", [{"class": "clock", "count": boxes}], None)]
    assert _score(build_rewards([{"name": "geneval", "checkpoint": str(folder), **keep_all}]), images[:1], exact).tolist() == [1.0]
    # ... and a cap below the count makes it unreachable.
    capped = build_rewards([{"name": "geneval", "checkpoint": str(folder), **keep_all, "max_objects": boxes - 1}])
    assert _score(capped, images[:1], exact).tolist() == [0.5]
    # Nothing scores above 1: no detections, so only the counting row's exclude holds.
    nothing = build_rewards([{"name": "geneval", "checkpoint": str(folder), "confidence_threshold": 1.0, "counting_threshold": 1.0}])
    assert all(not dets for row in nothing.rewards["geneval"].detections(images, specs) for dets in row.values())
    assert _score(nothing, images).tolist() == [0.0, 0.0, 0.5, 0.0]


def test_extra_classes_compete_for_boxes_like_the_rows_own_classes(owlv2):
    folder, _ = owlv2
    images = _images(2)
    keep_all = {"confidence_threshold": 0.0, "max_overlap": 1.0, "max_objects": 100}
    plain = build_rewards([{"name": "geneval", "checkpoint": str(folder), **keep_all}]).rewards["geneval"]
    extra = build_rewards([{"name": "geneval", "checkpoint": str(folder), **keep_all, "extra_classes": ["dog", "bird"]}])
    three = parse_row("two_object", [{"class": c, "count": 1} for c in ("cat", "dog", "bird")])
    cat = parse_row("single_object", [{"class": "cat", "count": 1}])
    for image in images:
        with_rivals = extra.rewards["geneval"].detections(image[None], [cat])[0]["cat"]
        assert with_rivals == plain.detections(image[None], [three])[0]["cat"]
        assert len(with_rivals) <= len(plain.detections(image[None], [cat])[0]["cat"])


def test_colour_rows_pick_exactly_one_of_genevals_colours(owlv2, tiny_weights):  # noqa: F811
    folder, _ = owlv2
    suite = build_rewards([{"name": "geneval", "checkpoint": str(folder), "clip_checkpoint": str(tiny_weights.bin),
                            "clip_arch": TINY_ARCH, "confidence_threshold": 0.0}])
    image = _images(1, size=40).expand(len(COLORS), -1, -1, -1)
    rows = [(f"a photo of a {c} car", "colors", [{"class": "car", "count": 1, "color": c}], None) for c in COLORS]
    scores = _score(suite, image, rows)
    # The car is found; its crop gets one colour, so exactly one colour row passes in full.
    assert sorted(scores.tolist()) == [0.5] * (len(COLORS) - 1) + [1.0]


def test_colour_rows_without_clip_checkpoint_fail_clearly(owlv2):
    folder, _ = owlv2
    reward = build_rewards([{"name": "geneval", "checkpoint": str(folder)}]).rewards["geneval"]
    with pytest.raises(RewardConfigError, match="clip_checkpoint"):
        reward(_images(1), ["a photo of a red car"], tag=["colors"], include=[[{"class": "car", "count": 1, "color": "red"}]])


def test_missing_or_wrong_checkpoints_fail_before_scoring(owlv2, tmp_path):
    folder, _ = owlv2
    with pytest.raises(RewardCheckpointError, match="does not exist"):
        build_rewards([{"name": "geneval", "checkpoint": str(tmp_path / "absent")}])
    with pytest.raises(RewardCheckpointError, match="clip_checkpoint"):
        build_rewards([{"name": "geneval", "checkpoint": str(folder), "clip_checkpoint": str(tmp_path / "absent.bin")}])
    clip_folder = tmp_path / "clip"
    clip_folder.mkdir()
    (clip_folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(RewardCheckpointError, match="'clip' model"):
        build_rewards([{"name": "geneval", "checkpoint": str(clip_folder)}])


def test_rewards_score_reads_geneval_metadata_from_jsonl(owlv2, tmp_path, capsys):
    folder, _ = owlv2
    images = tmp_path / "images"
    images.mkdir()
    lines = []
    for i, (prompt, tag, include, exclude) in enumerate(ROWS):
        name = f"{i}.png"
        Image.fromarray((_images(1, 32)[0].permute(1, 2, 0) * 255).byte().numpy()).save(images / name)
        row = {"image": name, "prompt": prompt, "tag": tag, "include": include}
        lines.append(json.dumps(row | ({"exclude": exclude} if exclude else {})))
    (tmp_path / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    spec = tmp_path / "rewards.yaml"
    spec.write_text(yaml.safe_dump({"rewards": [{"name": "geneval", "checkpoint": str(folder), "confidence_threshold": 0.0,
                                                 "counting_threshold": 0.0, "max_overlap": 1.0}]}))
    out = tmp_path / "scores.jsonl"
    assert cli.main(["score", "--rewards", str(spec), "--images", str(images), "--prompts",
                     str(tmp_path / "prompts.jsonl"), "--out", str(out)]) == 0
    scores = [json.loads(line)["geneval"] for line in out.read_text().splitlines()]
    # Every box is detected: single object passes; two clocks are too many (the counting row's
    # exclude is dropped by `score`, which keeps only columns every row has, and re-derived).
    assert len(scores) == len(ROWS) and scores[0] == 1.0 and scores[2] == 0.5
    assert "geneval" in capsys.readouterr().out


def test_eval_rewards_scores_a_checkpoint_on_geneval_metadata(owlv2, tmp_path):
    from policies.tiny import build_tiny_policy
    from rl.evaluate import main as eval_main

    folder, _ = owlv2
    policy = tmp_path / "policy"
    build_tiny_policy(hidden_size=32, num_hidden_layers=1).save(policy)
    # GenEval's `position: ["left of", 0]` mixes text and numbers, which a datasets table cannot
    # hold, so this prompt set stores include / exclude as JSON text (which the reward also reads).
    rows = [{"prompt": p, "tag": t, "include": json.dumps(i), "exclude": json.dumps(e) if e else None} for p, t, i, e in ROWS]
    prompts = tmp_path / "geneval.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = tmp_path / "rewards.yaml"
    spec.write_text(yaml.safe_dump({"rewards": [{"name": "geneval", "checkpoint": str(folder), "confidence_threshold": 0.0,
                                                 "counting_threshold": 0.0, "max_overlap": 1.0}]}))
    out = tmp_path / "eval"
    assert eval_main(["rewards", "--model", str(policy), "--prompts", str(prompts), "--rewards", str(spec), "--out", str(out),
                      "--num_images", "2", "--codec", "palette", "--batch_size", "4"]) == 0
    per_prompt = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert [r["geneval"] for r in per_prompt[:3:2]] == [[1.0, 1.0], [0.5, 0.5]]  # every box kept: bench found; clocks too many
    assert all(r["passed"] == [s == 1.0 for s in r["geneval"]] for r in per_prompt)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rewards/geneval/mean"] == pytest.approx(sum(sum(r["geneval"]) for r in per_prompt) / 8)
