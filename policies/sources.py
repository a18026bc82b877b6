"""What a folder a stage wrote holds, and where its weights, tokenizer and records are (read without loading).

Every command that takes a policy (``generate``, ``eval``, GRPO's ``model_name_or_path``, the demo,
ablations, ``export``, :func:`policies.loading.load_policy`) resolves it here first:

=========  =====================================================================================
kind       what the folder holds
=========  =====================================================================================
model      a Hugging Face model folder: ``config.json``, weights, a tokenizer
adapter    a LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``): a LoRA run or
           its ``checkpoint-N``; the base is the folder ``adapter_config.json`` names (``--base``
           when it has moved)
zero3      a DeepSpeed ZeRO checkpoint (``global_step*/`` partitions) without whole weights, or
           with them when the engine's fp32 masters are asked for (``export``)
fsdp       an FSDP2 checkpoint (``pytorch_model_fsdp_0/`` shards or ``pytorch_model_fsdp.bin``),
           likewise
=========  =====================================================================================

A run folder with none of these at its top (a run stopped before its final save) stands for its
newest complete ``checkpoint-N``. Each kind keeps the records the run wrote: the layout, templates and
codec in ``config.json`` (``simplear_visual_vocab``) or, next to an adapter, in
:data:`POLICY_RECORD_FILE`.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .vocab import CONFIG_KEY

logger = logging.getLogger(__name__)

#: The record a GRPO run writes next to its weights or adapter: model_type, layout (templates, codec) and recipe.
POLICY_RECORD_FILE = "simplear_policy.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json")
FSDP_SHARDS = "pytorch_model_fsdp_0"
FSDP_FULL = "pytorch_model_fsdp.bin"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_NEITHER = (
    "a Hugging Face model folder (config.json, weights and a tokenizer) or a LoRA adapter folder "
    "(adapter_config.json + adapter_model.safetensors)"
)


@dataclass
class PolicySource:
    """A resolved policy folder: where to read each part from."""

    kind: str  # model | adapter | zero3 | fsdp
    folder: Path  # the folder that was named (or the newest checkpoint of a run folder named)
    model_folder: Path  # config.json (and, for ``model``, the weights); an adapter's base
    tokenizer_folder: Path
    config: dict = field(default_factory=dict)  # config.json with the run's record on top
    record: dict = field(default_factory=dict)  # POLICY_RECORD_FILE, {} if none
    adapter: Path | None = None

    @property
    def model_type(self) -> str | None:
        return self.config.get("model_type")

    @property
    def hidden_size(self) -> int | None:
        return self.config.get("hidden_size") or (self.config.get("text_config") or {}).get("hidden_size")

    @property
    def layout(self) -> dict:
        """The recorded ``simplear_visual_vocab`` layout ({} if none)."""
        return self.config.get(CONFIG_KEY) or {}


def read_json(path: Path) -> dict:
    """A JSON object file as a dict ({} if missing or unreadable)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in TOKENIZER_FILES)


def _has_weights(folder: Path) -> bool:
    return any((folder / f).exists() for f in WEIGHT_FILES)


def engine_kind(folder: Path) -> str | None:
    """``zero3`` / ``fsdp`` when ``folder`` holds a sharding engine's own checkpoint files, else None."""
    if any(folder.glob("global_step*/*model_states.pt")):
        return "zero3"
    if (folder / FSDP_SHARDS).is_dir() or (folder / FSDP_FULL).is_file():
        return "fsdp"
    return None


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest ``checkpoint-N`` in ``folder`` whose save completed (``trainer_state.json`` written last)."""
    found = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir())
    complete = [p for _, p in found if (p / "trainer_state.json").is_file()]
    return complete[-1] if complete else None


def adapter_base(adapter: Path, base: str | Path | None = None) -> Path:
    """The base model folder of a LoRA adapter: ``base`` if given, else the one ``adapter_config.json`` names.

    A relative recorded path is tried as given, then from the adapter's folders upwards (a run records
    its base relative to where it was launched), then by its last part next to the adapter (a run folder
    that was moved keeps its ``init-policy``).
    """
    if base is not None:
        folder = Path(base).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"--base {str(folder)!r} is not a Hugging Face model folder (no config.json)")
        return folder
    recorded = read_json(adapter / ADAPTER_CONFIG).get("base_model_name_or_path")
    if not recorded:
        raise ValueError(f"LoRA adapter {str(adapter)!r}: adapter_config.json names no base model; give it with --base PATH")
    path = Path(recorded).expanduser()
    ups = [adapter, *list(adapter.resolve().parents)[:3]]
    candidates = [path] + ([] if path.is_absolute() else [u / path for u in ups]) + [u / path.name for u in ups]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"LoRA adapter {str(adapter)!r} was trained on base model {recorded!r} (adapter_config.json), which is not "
        "a model folder here; if the base has moved, give its folder with --base PATH"
    )


def resolve_source(path: str | Path, base: str | Path | None = None, prefer_engine: bool = False,
                   what: str = "policy checkpoint") -> PolicySource:
    """Classify ``path`` (see the module docstring); the error for a folder that is neither kind names both.

    ``prefer_engine``: a checkpoint holding both whole weights and the engine's shards resolves to the
    shards (the engine's fp32 master weights; ``export`` consolidates them).
    """
    folder = Path(path).expanduser()
    if not folder.exists():
        raise FileNotFoundError(f"{what} folder {str(folder)!r} does not exist (weights are never downloaded; give a local path)")
    if not folder.is_dir():
        raise NotADirectoryError(f"{what} {str(folder)!r} is a file; expected {_NEITHER}")
    record = read_json(folder / POLICY_RECORD_FILE)
    if (folder / ADAPTER_CONFIG).is_file():
        if not any((folder / f).is_file() for f in ADAPTER_WEIGHTS):
            raise FileNotFoundError(f"LoRA adapter folder {str(folder)!r} has adapter_config.json but no adapter_model.safetensors")
        model_folder = adapter_base(folder, base)
        kind, adapter = "adapter", folder
    elif (folder / "config.json").is_file() and not engine_kind(folder) and not _has_weights(folder) and (
            checkpoint := newest_checkpoint(folder)) is not None:
        # A run whose engine saved no whole weights at its end (FSDP2 sharded state dict): its newest checkpoint.
        logger.info("%s has no final weights at its top: using its newest complete checkpoint %s", folder, checkpoint)
        return resolve_source(checkpoint, base=base, prefer_engine=prefer_engine, what=what)
    elif (folder / "config.json").is_file():
        engine = engine_kind(folder)
        kind = engine if engine and (prefer_engine or not _has_weights(folder)) else "model"
        model_folder, adapter = folder, None
    elif folder.is_dir() and (checkpoint := newest_checkpoint(folder)) is not None:
        logger.info("%s has no final weights at its top: using its newest complete checkpoint %s", folder, checkpoint)
        return resolve_source(checkpoint, base=base, prefer_engine=prefer_engine, what=what)
    else:
        raise FileNotFoundError(
            f"{what} folder {str(folder)!r} has no config.json and no adapter_config.json: expected {_NEITHER}, "
            "or a run folder holding one or a complete checkpoint-N"
        )
    tokenizer_folder = folder if _has_tokenizer(folder) else model_folder
    if not _has_tokenizer(tokenizer_folder):
        raise FileNotFoundError(
            f"{what} folder {str(folder)!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer next to the model"
        )
    if kind == "model" and not _has_weights(folder):
        raise FileNotFoundError(f"{what} folder {str(folder)!r} has config.json but no weights ({', '.join(WEIGHT_FILES[::2])})")
    config = read_json(model_folder / "config.json")
    if record.get(CONFIG_KEY):
        config = {**config, CONFIG_KEY: record[CONFIG_KEY]}
    return PolicySource(kind, folder, model_folder, tokenizer_folder, config, record, adapter)


def write_policy_record(folder: str | Path, model_type: str | None, layout: dict, base_model: str | None,
                        recipe: dict | None = None) -> Path:
    """Write :data:`POLICY_RECORD_FILE` into ``folder``: what loading an adapter or an export needs besides the
    weights (family, layout with templates and codec) and what the model card reports (base, recipe)."""
    from .records import write_json

    record = {"model_type": model_type, CONFIG_KEY: layout, "base_model": base_model, "recipe": recipe or {}}
    return write_json(Path(folder) / POLICY_RECORD_FILE, record)
