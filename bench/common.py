"""What the benchmark scripts share: the model sizes and layouts, the random-weight model, the prompts, memory probes.

Each script in ``bench/`` runs as ``python bench/<script>.py``, so this folder is on ``sys.path`` and
``from common import ...`` finds this module; importing it also puts the checkout on ``sys.path``, so
the scripts run from a checkout without installing the package.
"""

from __future__ import annotations

import ctypes
import json
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from transformers import GenerationConfig, Qwen2ForCausalLM  # noqa: E402

from policies.tiny import tiny_qwen2_config  # noqa: E402
from policies.vocab import VisualVocab  # noqa: E402

TEXT_VOCAB, CODEBOOK = 151_672, 64_000  # the released SimpleAR layout: 215,672 rows
T2I, SOI, PAD = 151_665, 151_667, 151_643
SIZES = {
    # The tiny demo policy (recipes/tiny, recipes/demo): 2 layers, hidden 64, a ~100-word text vocabulary, 64 codes.
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128),
    "cpu": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, intermediate_size=1024),
    # Qwen2.5-0.5B and -1.5B dimensions (the SimpleAR-0.5B and -1.5B backbones).
    "0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864),
    "1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960),
}
#: ``(text_vocab_size, codebook_size)`` per size: the released SimpleAR layout except for the tiny demo policy.
LAYOUTS = {size: (104, 64) if size == "tiny" else (TEXT_VOCAB, CODEBOOK) for size in SIZES}


def layout_vocab(size: str, grid: tuple[int, int]) -> VisualVocab:
    """The visual layout of a benchmark size."""
    text_vocab, codebook = LAYOUTS[size]
    return VisualVocab(text_vocab_size=text_vocab, codebook_size=codebook, grid=grid)


def qwen2_config(size: str, layers: int | None = None, init_std: float = 0.02):
    """The Qwen2 config of a size (tied embeddings, the size's vocabulary), optionally with fewer ``layers``."""
    dims = dict(SIZES[size])
    if layers:
        dims["num_hidden_layers"] = layers
    return tiny_qwen2_config(
        sum(LAYOUTS[size]), max_position_embeddings=32_768, rope_theta=1_000_000.0, initializer_range=init_std, **dims,
    )


def build_model(size: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                layers: int | None = None, init_std: float = 0.02) -> Qwen2ForCausalLM:
    """A random-weight Qwen2 of a size (seed 0), in eval mode; its parameters require grad, as a trained policy's do."""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(qwen2_config(size, layers, init_std)).to(device=device, dtype=dtype).eval()
    model.generation_config = GenerationConfig()  # no text-chat defaults
    return model


def special_ids(vocab: VisualVocab) -> tuple[int, int, int]:
    """``(t2i, soi, pad)`` ids: SimpleAR's for the real layout, the last text ids for the tiny one."""
    if vocab.text_vocab_size == TEXT_VOCAB:
        return T2I, SOI, PAD
    return vocab.text_vocab_size - 7, vocab.text_vocab_size - 5, 0


def make_prompts(count: int, vocab: VisualVocab, samples: int = 1,
                 lengths: tuple[int, int, int] = (12, 7, 24)) -> tuple[list[list[int]], list[int]]:
    """``count`` templated prompts of random text ids, each repeated ``samples`` times, and the shared uncond prompt.

    Caption ``i`` has ``a + (b * i) % c`` tokens for ``lengths = (a, b, c)``, so prompt lengths differ.
    """
    t2i, soi, _ = special_ids(vocab)
    low, high = (1_000, 150_000) if vocab.text_vocab_size == TEXT_VOCAB else (3, vocab.text_vocab_size - 7)
    first, step, spread = lengths
    gen = torch.Generator().manual_seed(1)
    prompts = []
    for i in range(count):
        caption = torch.randint(low, high, (first + (step * i) % spread,), generator=gen).tolist()
        prompts += [[t2i, *caption, soi]] * samples
    return prompts, [t2i, soi]


def rss() -> int:
    """This process's resident memory in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def malloc_trim() -> None:
    """Hand freed heap back to the OS, so that one measurement's leftovers do not hide the next one's peak."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator stats, or RSS polled every 2 ms on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak = 0

    def _poll(self):
        while not self._stop.is_set():
            self._max = max(self._max, rss())
            time.sleep(0.002)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            malloc_trim()
            self._base = self._max = rss()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, rss()) - self._base


def write_rows(path: str | Path | None, env: dict, rows: list[dict]) -> None:
    """Write a benchmark's ``{"env": ..., "rows": [...]}`` JSON to ``path`` (nothing when no path was asked for)."""
    if path:
        Path(path).write_text(json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
