"""Visual codecs: pixels <-> grids of discrete codes."""

from __future__ import annotations

from .base import VisualCodec, check_codec_matches
from .fsq import FSQ
from .palette import PaletteCodec

__all__ = ["FSQ", "PaletteCodec", "VisualCodec", "check_codec_matches"]
