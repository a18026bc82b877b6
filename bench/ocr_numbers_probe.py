"""How well PP-OCR reads ground-truth number pictures after the palette codec (no policy involved).

For each token grid (patch size, palette levels) and each way of reading (detection + recognition,
recognition only, with an upscale and a blur first), the held-out numbers of the numbers demo are
rendered, encoded, decoded and read. Prints exact-match rate, mean edit similarity and milliseconds
per picture (wall clock on this machine; compare rows of one run only).

    python bench/ocr_numbers_probe.py --count 40
"""

from __future__ import annotations

import argparse
import time

import torch

from policies.codecs import build_codec
from pretrain_sft.number_data import held_out_numbers, render_number, to_pixels
from rewards.ocr import OCRReward, edit_similarity, exact_match, to_uint8

READERS = {  # name: (use_det, upscale, blur)
    "det+rec": (True, 1.0, 0.0),
    "rec": (False, 1.0, 0.0),
    "rec up2": (False, 2.0, 0.0),
    "rec up2 blur1": (False, 2.0, 1.0),
    "rec up2 blur1.5": (False, 2.0, 1.5),
    "rec up2 blur2": (False, 2.0, 2.0),
    "rec up3 blur2": (False, 3.0, 2.0),
    "rec up4 blur3": (False, 4.0, 3.0),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=40)
    p.add_argument("--grids", default="4:4,4:6,4:8,2:4", help="patch:levels pairs")
    p.add_argument("--readers", default=",".join(READERS))
    p.add_argument("--font_size", type=int, default=26)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    numbers = held_out_numbers(args.count)
    clean = torch.stack([to_pixels(render_number(n, font_size=args.font_size)) for n in numbers])
    pictures = {"ground truth": clean}
    for pair in args.grids.split(","):
        patch, levels = (int(x) for x in pair.split(":"))
        codec = build_codec("palette", levels=levels, patch=patch)
        pictures[f"patch {patch} levels {levels} ({32 // patch}x{96 // patch})"] = codec.decode(codec.encode(clean))
    print(f"| picture | reader | exact | edit sim | ms/picture |\n| --- | --- | ---: | ---: | ---: |")
    for name in args.readers.split(","):
        use_det, upscale, blur = READERS[name]
        reward = OCRReward(use_det=use_det, upscale=upscale, blur=blur, num_threads=args.threads, text_score=0.0)
        for label, pixels in pictures.items():
            images = to_uint8((pixels + 1) / 2)
            start = time.perf_counter()
            read = reward.read(list(images))
            ms = 1000 * (time.perf_counter() - start) / len(images)
            exact = sum(exact_match(r, n) for r, n in zip(read, numbers)) / len(numbers)
            sim = sum(edit_similarity(r, n) for r, n in zip(read, numbers)) / len(numbers)
            print(f"| {label} | {name} | {100 * exact:.0f}% | {sim:.3f} | {ms:.0f} |", flush=True)


if __name__ == "__main__":
    main()
