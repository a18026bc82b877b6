"""``simplear-rl generate``: sample images from a policy with classifier-free guidance.

With no ``--model`` it runs the tiny default (random weights, palette codec) so a new user sees the
whole path work without any checkpoint. Every image's seed is recorded in ``metadata.jsonl``;
``--prompts "<prompt>" --seed <seed> --num_images 1`` (same settings) reproduces it alone, because
each row draws from its own seeded stream.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .codecs import (
    PaletteCodec,
    VisualCodec,
    available_codecs,
    build_recorded_codec,
    check_codec_matches,
    codec_record,
)
from .commands import CommandParser, command
from .dtypes import resolve_dtype
from .guidance import SamplingConfig
from .images import captioned_grid, save_png, to_pil
from .families import family_for_model_type
from .loading import Policy, checkpoint_config, load_source
from .output_folder import claim_output_folder
from .records import read_records, write_jsonl
from .rendering import render
from .sampler import ROLLOUT_BACKENDS
from .sources import PolicySource, resolve_source
from .tiny import build_tiny_policy
from .vocab import CONFIG_KEY

SIMPLEAR_CFG_SCALE = 6.0
#: The tiny default has random weights; a mild scale keeps its samples varied.
TINY_CFG_SCALE = 3.0
DEMO_PROMPTS = ("a red square on a blue background", "two yellow circles", "a green triangle in the center")


def add_policy_arguments(p: argparse.ArgumentParser, model_required: bool = False) -> None:
    """Flags that choose the policy, its codec and the prompt templates (shared with ``simplear-rl eval``)."""
    if model_required:
        p.add_argument("--model", required=True, help="policy folder: a run, a checkpoint-N, a LoRA run or an export")
    else:
        p.add_argument("--model", help="policy folder (a run, a checkpoint-N, a LoRA run or an export); omit to run the tiny default (random weights)")
    p.add_argument("--base", help="base model folder of a LoRA adapter --model whose recorded base has moved "
                   "(default: the one its adapter_config.json names)")
    p.add_argument("--codec", choices=available_codecs(), help="default: the codec the checkpoint records, else cosmos (palette for the tiny default)")
    p.add_argument("--codec_path", help="local codec folder (cosmos: holds encoder.jit and decoder.jit)")
    p.add_argument("--codec_levels", type=int, help="palette codec: colour levels per channel (default: the recorded ones)")
    p.add_argument("--codec_patch", type=int, help="palette codec: pixels per patch side (default: the recorded ones)")
    p.add_argument("--resolution", type=int, help="square image size in pixels (default: the policy's grid)")
    p.add_argument("--prompt_prefix", default=None, help="text before every caption (default: the policy's)")
    p.add_argument("--uncond_prompt", default=None, help="negative prompt text (default: the caption-dropped template)")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", default="auto",
                   help="auto (bf16 on CUDA, and on CPUs with bf16 hardware for models of hidden size >= 256; "
                   "else fp32), bfloat16, float16, float32")


def add_sampling_arguments(p: argparse.ArgumentParser, num_images: int = 1) -> None:
    """Flags of the CFG sampler and the seeds (shared with ``simplear-rl eval``)."""
    p.add_argument("--num_images", type=int, default=num_images, help=f"images per prompt (default {num_images})")
    p.add_argument("--cfg_scale", type=float, default=None, help=f"guidance scale (default: the family's, {SIMPLEAR_CFG_SCALE} for SimpleAR, 5 for Janus, 3 for Emu3; tiny default {TINY_CFG_SCALE})")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature of the visual tokens (1 = the model's)")
    p.add_argument("--top_k", type=int, default=0, help="0 = the whole codebook")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image k of the run uses seed + k")
    p.add_argument("--batch_size", type=int, default=8, help="images sampled together")
    p.add_argument("--backend", default="auto", choices=ROLLOUT_BACKENDS,
                   help="rollout backend: eager loop, compiled (static KV cache + torch.compile'd decode step; "
                   "compiles once, tens of seconds), auto (compiled on CUDA, eager on CPU); the images are the same")


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (``simplear-rl generate --help``)."""
    p = CommandParser(
        prog="simplear-rl generate",
        description="Sample images from a policy with classifier-free guidance.",
        epilog=__doc__.split("\n\n", 1)[1],
    )
    add_policy_arguments(p)
    p.add_argument("--prompts", nargs="+", default=[], help="captions, one image set per caption")
    p.add_argument("--prompts_file", help="a .txt file (one caption per line) or a .jsonl file with a 'prompt' key")
    add_sampling_arguments(p)
    p.add_argument("--out", required=True, help="output folder for PNGs, grid.png and metadata.jsonl (new or empty, "
                   "unless --append)")
    p.add_argument("--append", action="store_true",
                   help="add this run to an earlier `generate` folder: metadata.jsonl then lists both runs' images")
    return p


def image_seeds(seed: int, num_prompts: int, num_images: int) -> list[tuple[int, int, int]]:
    """``(prompt_index, sample, seed)`` for every image: image ``k`` of a run uses ``seed + k``."""
    return [(i, s, seed + i * num_images + s) for i in range(num_prompts) for s in range(num_images)]


def read_prompts_file(path: str | Path) -> list[dict]:
    """Prompt rows from a ``.txt`` (one caption per non-blank line) or ``.jsonl``/``.json`` (objects with
    ``prompt``) file; a row's other fields (a reward's metadata) travel into ``metadata.jsonl``."""
    rows = read_records(path, what="prompts file", text_key="prompt")
    bad = next((i for i, r in enumerate(rows, 1) if not isinstance(r.get("prompt"), str)), None)
    if bad is not None:
        raise ValueError(f"row {bad} of prompts file {str(path)!r} has no string 'prompt'")
    return rows


@dataclass
class Setup:
    """What a run samples with: the policy, its codec, the grid and the sampling settings."""

    policy: Policy
    codec: VisualCodec
    grid: tuple[int, int]
    config: SamplingConfig
    uncond_text: str
    backend: str = "eager"
    #: A negative prompt's ids (shared by every row); None: the family's own unconditional prompts.
    uncond_ids: list[int] | None = None

    def settings(self) -> dict:
        """Everything besides caption and seed that decides an image, for the records written next to it."""
        c = self.config
        return {
            "cfg_scale": c.cfg_scale, "temperature": c.temperature, "top_k": c.top_k, "top_p": c.top_p,
            "prompt_prefix": self.policy.vocab.prompt_prefix, "uncond_prompt": self.uncond_text,
            "grid": list(self.grid), "resolution": list(self.codec.resolution_for(self.grid)),
            "codec": codec_record(self.codec),
        }

    def render(self, captions: list[str], jobs: list[tuple[int, int, int]], batch_size: int) -> torch.Tensor:
        """Images ``[N,3,H,W]`` in ``[0,1]`` for :func:`image_seeds` jobs ``(caption index, sample, seed)``."""
        return render(
            self.policy, self.codec, [captions[i] for i, _, _ in jobs], [seed for _, _, seed in jobs], self.config,
            uncond_ids=self.uncond_ids, grid=self.grid, batch_size=batch_size,
            backend=self.backend,
        )


def recorded_codec(model: str | Path | PolicySource) -> dict | None:
    """The codec a policy folder records (in its config, or next to its adapter), read without loading the model."""
    layout = model.layout if isinstance(model, PolicySource) else checkpoint_config(model).get(CONFIG_KEY) or {}
    return (layout.get("extra") or {}).get("codec")


def codec_choice(args: argparse.Namespace, recorded: dict | None, default: dict | None = None) -> dict:
    """The codec record to build: ``--codec`` (default: the recorded codec, else the family's own, e.g. a Janus or
    Emu3 checkpoint's VQ-VAE, else cosmos), with the settings the checkpoint records for that codec and
    ``--codec_levels``/``--codec_patch`` on top."""
    recorded = recorded or default
    name = args.codec or (recorded or {}).get("name") or "cosmos"
    record = dict(recorded) if recorded and recorded.get("name") == name else {"name": name}
    overrides = {k: v for k, v in (("levels", args.codec_levels), ("patch", args.codec_patch)) if v is not None}
    if overrides and name != "palette":
        raise ValueError(f"--codec_levels/--codec_patch set the palette codec, but the codec is {name!r}")
    return {**record, **overrides}


def build_setup(args: argparse.Namespace, log) -> Setup:
    """Load (or build) the policy and the codec, and check that they fit together."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    resolve_dtype(args.dtype, device)  # an unknown name is reported before anything loads
    family = source = None
    if args.model is not None:  # a missing or unusable folder is reported before anything loads
        source = resolve_source(args.model, base=getattr(args, "base", None))
        family = family_for_model_type(source.model_type)
    default_cfg = TINY_CFG_SCALE if family is None else family.default_cfg_scale
    config = SamplingConfig(  # checked before anything loads
        cfg_scale=default_cfg if args.cfg_scale is None else args.cfg_scale,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
    )
    if args.model is None:
        log("no --model given: using the tiny default policy with RANDOM weights and the palette codec "
            "(images will look like coloured noise; pass --model PATH for a trained checkpoint)")
        if args.codec not in (None, "palette"):
            raise ValueError(f"the tiny default policy only works with the palette codec, not {args.codec!r}")
        codec = build_recorded_codec(codec_choice(args, codec_record(PaletteCodec())))
        policy = build_tiny_policy()
        policy.model.to(device=device, dtype=resolve_dtype(args.dtype, device, policy.model.config.hidden_size))
    else:
        codec_dtype = None if args.dtype == "auto" else args.dtype
        choice = codec_choice(args, recorded_codec(source), family.default_codec(source.model_folder))
        # A Janus / Emu3 checkpoint carries its own (frozen) VQ-VAE: decode with the one in the folder being sampled
        # (an adapter's base: LoRA never touches the VQ-VAE).
        path = args.codec_path or (source.model_folder if choice["name"] == "vqvae" else None)
        codec = build_recorded_codec(choice, path=path, device=device, dtype=codec_dtype)
        policy = load_source(source, dtype=args.dtype, device=device)
    vocab = policy.vocab
    if args.prompt_prefix is not None:
        vocab = vocab.replace(prompt_prefix=args.prompt_prefix)
    grid = codec.grid_for(args.resolution) if args.resolution else vocab.grid
    check_codec_matches(codec, vocab.codebook_size, grid, args.resolution)
    vocab = vocab.with_grid(grid)  # every template below is formatted with the grid actually sampled
    policy.vocab = vocab
    if args.uncond_prompt is None:
        uncond_text, uncond_ids = vocab.format_uncond(), None
    else:  # a negative prompt takes the caption's place in the cond template, without the prefix
        uncond_text = vocab.replace(prompt_prefix="").format_cond(args.uncond_prompt)
        uncond_ids = policy.encode_text(uncond_text)
    return Setup(policy, codec, grid, config, uncond_text, args.backend, uncond_ids)


def generate(args: argparse.Namespace, prompts: list[dict], setup: Setup, out: Path, run: int = 0) -> list[dict]:
    """Sample ``num_images`` per caption in batches; write PNGs, ``grid.png`` and ``metadata.jsonl``.

    ``run`` > 0 adds to an earlier run's folder: its images are named ``run<k>_<i>_<s>.png``, ``metadata.jsonl``
    lists every run's images, ``grid.png`` shows this run. ``prompts`` are rows with a ``prompt``; their other
    fields are copied into each image's record, so ``rewards score`` finds the metadata its rewards need.
    Returns this run's records.
    """
    captions = [row["prompt"] for row in prompts]
    jobs = image_seeds(args.seed, len(captions), args.num_images)
    settings = {**setup.settings(), "model": args.model or "tiny-default"}
    images = setup.render(captions, jobs, args.batch_size)
    records = []
    prefix = f"run{run}_" if run else ""
    for (i, s, seed), image in zip(jobs, images):
        name = f"{prefix}{i}_{s}.png"
        to_pil(image).save(out / name)
        records.append({**prompts[i], "image": name, "run": run, "prompt_index": i, "sample": s, "seed": seed,
                        **settings})
    grid_captions = [captions[i] if s == 0 else "" for i, s, _ in jobs]
    save_png(captioned_grid(images, grid_captions, ncol=args.num_images), out / "grid.png")
    earlier = read_records(out / "metadata.jsonl") if run else []
    write_jsonl(out / "metadata.jsonl", [*earlier, *records])
    return records


@command("generate")
def main(argv: list[str]) -> int:
    """Entry point of ``simplear-rl generate``; returns the exit status (see :mod:`policies.commands`)."""
    args = build_parser().parse_args(argv)

    def log(message: str) -> None:
        print(f"simplear-rl generate: {message}", file=sys.stderr)

    if args.num_images < 1 or args.batch_size < 1:
        raise ValueError(f"--num_images and --batch_size must be >= 1 (got {args.num_images}, {args.batch_size})")
    if args.model is not None:
        resolve_source(args.model, base=args.base)  # before the prompts: a wrong path is the first thing to fix
    prompts = [{"prompt": text} for text in args.prompts]
    prompts += read_prompts_file(args.prompts_file) if args.prompts_file else []
    if not prompts and args.model is None:
        prompts = [{"prompt": text} for text in DEMO_PROMPTS]
        log(f"no prompts given: using {len(prompts)} demo prompts")
    if not prompts:
        raise ValueError("no prompts: give --prompts \"...\" or --prompts_file FILE")
    setup = build_setup(args, log)
    out = Path(args.out)
    run = claim_output_folder(out, "generate", append=args.append)
    records = generate(args, prompts, setup, out, run)
    log(f"wrote {len(records)} images, grid.png and metadata.jsonl to {out}")
    return 0
