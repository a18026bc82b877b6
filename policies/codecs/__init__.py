"""Visual codecs: pixels <-> grids of discrete codes, selected by name from a recipe.

``codec: palette`` is weight-free (demo and tests); ``codec: cosmos`` with ``codec_path: <folder>``
loads Cosmos-1.0-Tokenizer-DV8x16x16 from its local TorchScript files; ``codec: vqvae`` with
``codec_path: <checkpoint folder>`` uses the VQ-VAE inside a Janus(-Pro) or Emu3 checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..sources import PolicySource, resolve_source
from .base import VisualCodec, check_codec_matches
from .cosmos import CosmosCodec
from .fsq import FSQ
from .palette import PaletteCodec
from .vqvae import VQ_CLASSES, VQVAECodec

__all__ = [
    "CosmosCodec",
    "FSQ",
    "PaletteCodec",
    "VQVAECodec",
    "VisualCodec",
    "available_codecs",
    "build_recorded_codec",
    "codec_record",
    "build_codec",
    "build_codec_for",
    "check_codec_matches",
]


def _build_palette(path, device, dtype, **kwargs) -> VisualCodec:
    if path is not None:
        raise ValueError(f"codec: palette is weight-free and takes no codec_path (got {path!r}); remove codec_path.")
    return PaletteCodec(**kwargs)


def _build_cosmos(path, device, dtype, **kwargs) -> VisualCodec:
    if path is None:
        raise ValueError(
            "codec_path is required when codec: cosmos; set it to a local Cosmos-1.0-Tokenizer-DV8x16x16 "
            "folder holding encoder.jit and decoder.jit."
        )
    return CosmosCodec(path, device=device, dtype=dtype, **kwargs)


def _build_vqvae(path, device, dtype, **kwargs) -> VisualCodec:
    if path is None:
        raise ValueError(
            "codec_path is required when codec: vqvae; set it to a local checkpoint folder of one of the model "
            f"types {', '.join(sorted(VQ_CLASSES))} (its config.json and safetensors hold the VQ-VAE)."
        )
    return VQVAECodec(path, device=device, dtype=dtype, **kwargs)


_BUILDERS: dict[str, Callable[..., VisualCodec]] = {
    "palette": _build_palette,
    "cosmos": _build_cosmos,
    "vqvae": _build_vqvae,
}


def available_codecs() -> tuple[str, ...]:
    """Names accepted by :func:`build_codec` (the recipe's ``codec:`` key)."""
    return tuple(sorted(_BUILDERS))


def build_codec(
    name: str,
    path: str | Path | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    **kwargs: Any,
) -> VisualCodec:
    """Build the codec a recipe names (``codec``, ``codec_path``); ``kwargs`` go to its constructor.

    The palette codec ignores ``device`` and ``dtype`` (it follows its inputs' device).
    """
    builder = _BUILDERS.get(str(name).strip().lower())
    if builder is None:
        raise ValueError(f"unknown codec {name!r}; known codecs: {', '.join(available_codecs())}")
    return builder(path, device, dtype, **kwargs)


def build_codec_for(
    name: str,
    path: str | Path | None = None,
    *,
    policy: str | Path | PolicySource | None = None,
    base: str | Path | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    **options: Any,
) -> VisualCodec:
    """The codec a command's flags or a recipe name (``codec``, ``codec_path``, ``codec_dtype``, options).

    A ``vqvae`` codec without a ``path`` decodes with the VQ-VAE inside the ``policy`` it serves: the policy
    folder, or for a LoRA adapter its base (``base`` when it has moved), which holds the VQ-VAE. ``options``
    go to the codec's constructor (the palette codec's ``levels`` and ``patch``).
    """
    if str(name).strip().lower() == "vqvae" and path is None and policy is not None:
        path = (policy if isinstance(policy, PolicySource) else resolve_source(policy, base=base)).model_folder
    return build_codec(name, path=path, device=device, dtype=dtype, **options)


def codec_record(codec: VisualCodec) -> dict[str, Any]:
    """What a checkpoint records about its codec, so loaders can rebuild it without a flag.

    Paths are machine-specific and mostly not recorded (a Cosmos codec still needs ``codec_path``); a VQ-VAE
    codec records its checkpoint folder, which a ``path`` given to :func:`build_recorded_codec` overrides.
    """
    if isinstance(codec, PaletteCodec):
        return {"name": "palette", "levels": codec.levels, "patch": codec.patch}
    if isinstance(codec, CosmosCodec):
        return {"name": "cosmos"}
    if isinstance(codec, VQVAECodec):
        return {"name": "vqvae", "path": str(codec.path)}
    return {"name": type(codec).__name__}


def build_recorded_codec(record: dict[str, Any], path=None, device=None, dtype=None) -> VisualCodec:
    """Rebuild a codec from :func:`codec_record`'s dict (plus the local ``path`` a Cosmos codec needs).

    ``path`` overrides a recorded one.
    """
    options = {k: v for k, v in record.items() if k not in ("name", "path")}
    path = path if path is not None else record.get("path")
    return build_codec(record["name"], path=path, device=device, dtype=dtype, **options)
