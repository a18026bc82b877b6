"""``simplear-rl rewards list | score | serve``: see registered rewards, score images on disk, serve rewards.

``score --rewards SPEC --images DIR --prompts FILE [--out scores.jsonl] [--device cpu]``:
SPEC is a YAML/JSON file holding a ``rewards:`` list (a whole recipe works: only ``rewards``,
``reward_aggregation`` and ``reward_on_error`` are read) or an inline comma list of names; FILE is
JSONL (``image`` relative to DIR, ``prompt``, metadata columns) or plain text (one prompt per line,
matched to the sorted image files of DIR).

``serve --spec SPEC [--host 127.0.0.1] [--port 8100] [--token_file F | --token_env VAR]
[--ssl_certfile C --ssl_keyfile K]``: the rewards of SPEC in this process behind the HTTP API of
:mod:`rewards.server`, for the ``remote`` reward of a training run. A non-loopback ``--host`` needs a
token unless ``--insecure true``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from policies.commands import CommandParser, command

from .errors import RewardError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: Images read and scored per step.
CHUNK = 64


class InputError(RewardError, ValueError):
    """A file given on the command line is missing, unreadable or inconsistent."""


# ---------------------------------------------------------------------- list
def _list(_: argparse.Namespace) -> int:
    from . import available_rewards
    from .base import describe_parameters

    for name, info in available_rewards().items():
        print(f"{name}  [{info.source}]")
        if info.summary:
            print(f"    {info.summary}")
        print(f"    parameters: {describe_parameters(info.parameters)}")
        print(f"    required fields: {', '.join(info.required_fields) or '-'}")
        if info.threshold is not None:
            print(f"    passed when score >= {info.threshold:g}")
    return 0


# --------------------------------------------------------------------- score
def load_reward_specs(value: str) -> tuple[list[Any], dict[str, Any]]:
    """Specs and suite options (``aggregation``, ``on_error``) from a YAML/JSON file or ``a,b,c``."""
    import yaml

    if not os.path.exists(value):
        if value.endswith((".yaml", ".yml", ".json")):
            raise InputError(f"reward spec file {value} does not exist")
        names = [n.strip() for n in value.split(",") if n.strip()]
        if not names:
            raise InputError(f"--rewards {value!r} names no reward")
        return [{"name": n} for n in names], {}
    try:
        data = yaml.safe_load(Path(value).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(f"cannot read reward spec file {value}: {exc}") from exc
    if isinstance(data, list):
        return data, {}
    if not isinstance(data, dict) or "rewards" not in data:
        raise InputError(f"reward spec file {value} must be a list of rewards or a mapping with a `rewards:` key")
    options = {
        key: data[recipe_key]
        for key, recipe_key in (("aggregation", "reward_aggregation"), ("on_error", "reward_on_error"))
        if data.get(recipe_key) is not None
    }
    return data["rewards"], options


def read_prompt_rows(prompts_file: Path, images_dir: Path) -> list[dict[str, Any]]:
    """``[{"image": path, "prompt": str, **metadata}]`` from a JSONL or a plain-text prompt file."""
    if not images_dir.is_dir():
        raise InputError(f"image folder {images_dir} does not exist")
    try:
        lines = prompts_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read prompt file {prompts_file}: {exc}") from exc
    if prompts_file.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{prompts_file}:{number} is not valid JSON: {exc}") from exc
            if not isinstance(row, dict) or not isinstance(row.get("image"), str) or not isinstance(row.get("prompt"), str):
                raise InputError(f"{prompts_file}:{number} needs string fields 'image' and 'prompt'")
            row["image"] = images_dir / row["image"]
            rows.append(row)
        return rows
    prompts = [line.strip() for line in lines if line.strip()]
    images = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(prompts) != len(images):
        raise InputError(
            f"{len(prompts)} prompts in {prompts_file} but {len(images)} images in {images_dir}; a plain-text "
            "prompt file needs one prompt per image (matched in sorted file-name order), or use JSONL with 'image'"
        )
    return [{"image": image, "prompt": prompt} for image, prompt in zip(images, prompts)]


def load_image(path: Path):
    """An image file as float ``[3,H,W]`` in ``[0,1]``; unreadable or corrupt files are named."""
    import numpy as np
    import torch
    from PIL import Image

    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"cannot read image {path}: {exc}") from exc
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float() / 255.0


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    # Write beside the target and rename, so an interrupted run never leaves half a file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    os.replace(tmp, path)


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) or math.isinf(value) else value


def _score(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from . import build_rewards

    specs, options = load_reward_specs(args.rewards)
    prompts = Path(args.prompts) if args.prompts else Path(args.images) / "metadata.jsonl"
    rows = read_prompt_rows(prompts, Path(args.images))
    if not rows:
        raise InputError(f"prompt file {args.prompts} holds no prompts")
    suite = build_rewards(
        specs, device=args.device, dtype=args.dtype, aggregation=args.aggregation or options.get("aggregation", "sum")
    )
    # Every column any row has; rows without it get None (GenEval's `exclude` is on counting rows only).
    columns = set.union(*(set(row) for row in rows)) - {"image", "prompt"}
    suite.validate_columns(columns)
    for field_name in suite.required_fields:
        lacking = [os.path.relpath(row["image"], args.images) for row in rows if row.get(field_name) is None]
        if lacking:
            raise InputError(
                f"{len(lacking)} of {len(rows)} images have no {field_name!r} in {prompts} (e.g. {', '.join(lacking[:3])}); "
                "every image a reward scores needs the metadata the reward reads"
            )
    on_error = args.on_error or options.get("on_error", "fail")

    scores: dict[str, list[torch.Tensor]] = {name: [] for name in suite.names}
    with tqdm(total=len(rows), unit="img", file=sys.stderr, disable=len(rows) <= CHUNK) as progress:
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            images = [load_image(row["image"]) for row in chunk]
            metadata = {key: [row.get(key) for row in chunk] for key in columns}
            for name, values in suite.score(images, [row["prompt"] for row in chunk], on_error=on_error, **metadata).items():
                scores[name].append(values)
            progress.update(len(chunk))
    components = {name: torch.cat(parts) for name, parts in scores.items()}
    totals = suite.combine(components)

    records = []
    for i, row in enumerate(rows):
        record = {"image": os.path.relpath(row["image"], args.images), "prompt": row["prompt"]}
        record.update({name: _finite_or_none(values[i].item()) for name, values in components.items()})
        record["total"] = _finite_or_none(totals[i].item())
        records.append(record)
    _write_jsonl(Path(args.out), records)

    width = max(len(n) for n in [*suite.names, "total"])
    print(f"{'reward':<{width}}  {'weight':>6}  {'mean':>9}  {'dropped':>7}")
    for name, weight in zip(suite.names, suite.weights):
        values = components[name]
        print(f"{name:<{width}}  {weight:>6g}  {torch.nanmean(values).item():>9.4f}  {int(values.isnan().sum()):>7d}")
    print(f"{'total':<{width}}  {'':>6}  {torch.nanmean(totals).item():>9.4f}  {'':>7}   ({suite.aggregation}, {len(rows)} images)")
    print(f"per-image scores: {args.out}")
    return 0


# --------------------------------------------------------------------- serve
def _serve(args: argparse.Namespace) -> int:
    from . import build_rewards
    from .server import Limits, check_exposure, check_tls, require_serving_packages, serve
    from .tokens import load_token, readable_by_others

    require_serving_packages()  # before any reward model loads
    token = load_token(args.token_file, args.token_env, "--token_file/--token_env")
    check_exposure(args.host, token, args.insecure)
    check_tls(args.ssl_certfile, args.ssl_keyfile)
    if args.token_file and readable_by_others(args.token_file):
        print(f"simplear-rl rewards serve: warning: other users can read the token file {args.token_file}; "
              f"chmod 600 {args.token_file}", file=sys.stderr)
    positive = {"--max_batch": args.max_batch, "--max_body_mb": args.max_body_mb, "--max_pixels": args.max_pixels,
                "--max_concurrent": args.max_concurrent}
    for flag, value in positive.items():
        if value <= 0:
            raise InputError(f"{flag} must be positive, got {value:g}")
    if args.idle_timeout < 0:
        raise InputError(f"--idle_timeout must be >= 0 (0: never), got {args.idle_timeout:g}")
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be in 0..65535 (0: any free port), got {args.port}")
    specs, _ = load_reward_specs(args.spec)  # aggregation and on_error are the caller's business
    suite = build_rewards(specs, device=args.device, dtype=args.dtype)
    limits = Limits(max_batch=args.max_batch, max_body_bytes=int(args.max_body_mb * 2**20), max_pixels=args.max_pixels,
                    max_concurrent=args.max_concurrent)
    serve(suite, args.host, args.port, limits, idle_timeout=args.idle_timeout, exit_with_parent=args.exit_with_parent,
          log_level=args.log_level, token=token, insecure=args.insecure, ssl_certfile=args.ssl_certfile,
          ssl_keyfile=args.ssl_keyfile)
    return 0


def _true_or_false(value: str) -> bool:
    """``true``/``false`` (also yes/no, 1/0) for flags that take a value, like the recipe's booleans."""
    text = value.strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _parser() -> argparse.ArgumentParser:
    parser = CommandParser(prog="simplear-rl rewards", description="List rewards, score images on disk, serve rewards.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="every registered reward: parameters, required fields, source").set_defaults(
        run=_list
    )
    score = commands.add_parser("score", help="score an image folder with a set of rewards")
    score.add_argument("--rewards", required=True, help="YAML/JSON file with a `rewards:` list, or names 'a,b'")
    score.add_argument("--images", required=True, help="folder of images")
    score.add_argument("--prompts", default=None,
                       help="JSONL (image, prompt, metadata) or text, one per line (default: IMAGES/metadata.jsonl, "
                       "as `simplear-rl generate` writes it)")
    score.add_argument("--out", default="scores.jsonl", help="per-image scores (JSONL, default scores.jsonl)")
    score.add_argument("--device", default=None, help="device for model rewards (default cuda if available, else cpu)")
    score.add_argument("--dtype", default=None, help="dtype for model rewards: fp32 (default), bf16, fp16")
    score.add_argument("--aggregation", choices=("sum", "normalize_then_sum"), default=None,
                       help="how rewards combine into the total (default: the spec file's, else sum)")
    score.add_argument("--on_error", choices=("fail", "drop"), default=None,
                       help="a reward that raises on a row: fail the command, or drop the row (NaN) (default: the spec file's, else fail)")
    score.set_defaults(run=_score)
    serve = commands.add_parser("serve", help="serve rewards over HTTP for the `remote` reward (needs the serve extra)")
    serve.add_argument("--spec", required=True, help="YAML/JSON file with a `rewards:` list, or names 'a,b'")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8100, help="port (default 8100; 0: any free port, printed)")
    serve.add_argument("--device", default=None, help="device for model rewards (default cuda if available, else cpu)")
    serve.add_argument("--dtype", default=None, help="dtype for model rewards: fp32 (default), bf16, fp16")
    serve.add_argument("--max_batch", type=int, default=256, help="most rows per request (default 256)")
    serve.add_argument("--max_body_mb", type=float, default=512.0, help="largest request body in MiB (default 512)")
    serve.add_argument("--max_pixels", type=int, default=4096 * 4096, help="largest image, in pixels (default 4096x4096)")
    serve.add_argument("--max_concurrent", type=int, default=32,
                       help="most /score requests admitted at once (scored in turn); more get 503 + Retry-After")
    serve.add_argument("--token_file", default=None, help="file holding the bearer token clients must send")
    serve.add_argument("--token_env", default=None, help="environment variable holding the bearer token")
    serve.add_argument("--insecure", type=_true_or_false, nargs="?", const=True, default=False,
                       help="true: serve a non-loopback --host without a token (a trusted network only)")
    serve.add_argument("--ssl_certfile", default=None, help="PEM certificate: serve HTTPS")
    serve.add_argument("--ssl_keyfile", default=None, help="PEM private key of --ssl_certfile (unless that file holds it)")
    serve.add_argument("--idle_timeout", type=float, default=0.0, help="stop after this many idle seconds (0: never)")
    serve.add_argument("--exit_with_parent", action="store_true", help="stop when the process that started it exits")
    serve.add_argument("--log_level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                       help="server log level (default warning)")
    serve.set_defaults(run=_serve)
    return parser


@command("rewards")
def main(argv: list[str]) -> int:
    """Entry point of ``simplear-rl rewards``; returns the exit status (see :mod:`policies.commands`)."""
    args = _parser().parse_args(argv)
    if getattr(args, "device", "unset") is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
