"""``simplear-rl export RUN_OR_CHECKPOINT --out DIR [--merge] [--dtype bfloat16] [--overwrite true]``.

Turns anything a stage wrote into a plain Hugging Face folder: ``model.safetensors``, ``config.json``
(with the layout, templates and codec under ``simplear_visual_vocab``), the tokenizer, a neutral
``generation_config.json``, ``simplear_policy.json`` and a model card ``README.md`` built from the
run's records (:mod:`rl.model_card`). Sources: a full run, a ``checkpoint-N``, a LoRA run (``--merge``:
merged into its base; without it the adapter is exported with its base recorded as an absolute path),
a DeepSpeed ZeRO-3 checkpoint and an FSDP2 checkpoint (their fp32 master weights, consolidated with
``deepspeed.utils.zero_to_fp32`` / ``accelerate.utils.merge_fsdp_weights``). The folder is written
beside ``--out`` and renamed into place: an export that fails leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from policies.commands import BadInput, CommandParser, command
from policies.sources import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    POLICY_RECORD_FILE,
    TOKENIZER_FILES,
    PolicySource,
    resolve_source,
)
from policies.vocab import CONFIG_KEY

DTYPES = ("float32", "bfloat16", "float16")
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "chat_template.jinja", "chat_template.json")


def str_to_bool(value: str) -> bool:
    """``true``/``false`` (and 1/0, yes/no) as the recipes spell them."""
    text = str(value).lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def build_parser() -> argparse.ArgumentParser:
    """The command's flags (``simplear-rl export --help``)."""
    p = CommandParser(
        prog="simplear-rl export",
        description="Turn a run, a checkpoint-N, a LoRA run or a ZeRO-3 / FSDP2 checkpoint into a plain Hugging Face "
        "folder (safetensors, tokenizer, layout/templates/codec record, model card from the run's records).",
    )
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                   help="a run folder, a checkpoint-N folder, a LoRA run, a ZeRO-3 or FSDP2 checkpoint")
    p.add_argument("--out", required=True, help="the folder to write (refused if it exists and is not empty)")
    p.add_argument("--merge", action="store_true",
                   help="LoRA source: write the base with the adapter merged (a plain model folder); "
                   "without it, the adapter itself")
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="weights' dtype (default float32: the trained weights exactly; bfloat16: their rounding)")
    p.add_argument("--base", help="LoRA source whose recorded base model has moved: the base's folder")
    p.add_argument("--overwrite", type=str_to_bool, default=False,
                   help="true: a non-empty --out is first moved aside to <out>.overwritten-<time> (nothing deleted)")
    return p


def check_out(out: Path, source: PolicySource, overwrite: bool) -> bool:
    """Whether ``out`` holds something that must be moved aside first; refuses what would lose work."""
    if source.folder.resolve().is_relative_to(out.resolve()) or source.model_folder.resolve().is_relative_to(out.resolve()):
        raise BadInput(f"--out {str(out)!r} holds the source {str(source.folder)!r}; export to another folder")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {str(out)!r} is a file; choose a folder")
    busy = out.is_dir() and any(out.iterdir())
    if busy and not overwrite:
        raise FileExistsError(
            f"--out {str(out)!r} is not empty; choose a new folder, or pass --overwrite true (moves what is there "
            f"aside to {out.name}.overwritten-<time>, deleting nothing)"
        )
    return busy


def write_adapter(source: PolicySource, folder: Path) -> dict:
    """An adapter export: the adapter files, the tokenizer and records; the base named by its absolute path."""
    config = json.loads((source.folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(source.model_folder.resolve())
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    for name in (*ADAPTER_WEIGHTS, *TOKENIZER_FILES, "special_tokens_map.json"):
        for where in (source.folder, source.tokenizer_folder):
            if (where / name).is_file() and not (folder / name).exists():
                shutil.copy2(where / name, folder / name)
    return {"kind": "LoRA adapter (unmerged)", "dtype": "as trained"}


def write_model(source: PolicySource, folder: Path, dtype: str) -> dict:
    """A whole-model export: the policy loaded (adapter merged, shards consolidated) and saved as safetensors."""
    from policies.loading import load_source

    policy = load_source(source, dtype=dtype, device="cpu")
    policy.save(folder)
    for name in PROCESSOR_FILES:  # a Janus / Emu3 checkpoint's processor, so AutoProcessor loads the export too
        for where in (source.tokenizer_folder, source.model_folder):
            if (where / name).is_file() and not (folder / name).exists():
                shutil.copy2(where / name, folder / name)
    kind = {"adapter": "LoRA merged into its base", "zero3": "ZeRO-3 fp32 masters (zero_to_fp32)",
            "fsdp": "FSDP2 weights (accelerate)"}.get(source.kind, "full weights")
    return {"kind": kind, "dtype": dtype, "layout": policy.vocab.to_dict()}


def export(source_path: str | Path, out: str | Path, merge: bool = False, dtype: str = "float32",
           base: str | Path | None = None, overwrite: bool = False) -> Path:
    """Export ``source_path`` to ``out`` (see the module docstring); returns ``out``."""
    from pretrain_sft.checkpoints import move_earlier_run_aside

    from .model_card import model_card

    if dtype not in DTYPES:
        raise BadInput(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    source = resolve_source(source_path, base=base, prefer_engine=True)
    out = Path(out).expanduser()
    busy = check_out(out, source, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        if source.kind == "adapter" and not merge:
            exported = write_adapter(source, staging)
            layout = source.layout
        else:
            exported = write_model(source, staging, dtype)
            layout = exported.pop("layout")
        record = {**source.record, "model_type": source.model_type, CONFIG_KEY: layout,
                  "base_model": str(source.model_folder.resolve()) if source.kind == "adapter" else source.record.get("base_model"),
                  "exported_from": str(source.folder.resolve())}
        (staging / POLICY_RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        (staging / "README.md").write_text(model_card(source, exported, out=out), encoding="utf-8")
        if busy:
            move_earlier_run_aside(out)
        os.replace(staging, out)  # an empty --out is replaced; nothing is half-written
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


@command("export")
def main(argv: list[str] | None = None) -> int:
    """Entry point of ``simplear-rl export``; returns the exit status (see :mod:`policies.commands`)."""
    args = build_parser().parse_args(argv)
    out = export(args.source, args.out, merge=args.merge, dtype=args.dtype, base=args.base, overwrite=args.overwrite)
    print(f"simplear-rl export: wrote {out} (load it with `simplear-rl generate --model {out}` or load_policy)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
