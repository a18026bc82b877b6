"""The VQ-VAE stored inside a Janus(-Pro) or Emu3 checkpoint folder, as a visual codec.

Only the ``model.vqmodel.*`` tensors are read from the folder's safetensors (Emu3 checkpoints in the older
layout, which transformers renames on load, store them as ``vqmodel.*``); the language model is never loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

from ..dtypes import resolve_dtype
from .base import VisualCodec
from .checks import check_code_range, check_codes, check_pixels

#: model_type in config.json -> the name of its VQ-VAE class in transformers (built from ``config.vq_config``).
VQ_CLASSES = {"emu3": "Emu3VQVAE", "janus": "JanusVQVAE"}
#: Where the VQ weights sit in a checkpoint, newest layout first.
VQ_PREFIXES = ("model.vqmodel.", "vqmodel.")


def _model_type(folder: Path) -> str:
    config_file = folder / "config.json"
    if not folder.is_dir():
        raise FileNotFoundError(
            f"VQ-VAE checkpoint folder {folder} does not exist or is not a folder; set codec_path to a local "
            f"{' or '.join(sorted(VQ_CLASSES))} checkpoint folder."
        )
    if not config_file.is_file():
        raise FileNotFoundError(f"{folder} has no config.json; codec: vqvae needs a Janus or Emu3 checkpoint folder.")
    model_type = json.loads(config_file.read_text(encoding="utf-8")).get("model_type")
    if model_type not in VQ_CLASSES:
        raise ValueError(
            f"{folder} holds a {model_type!r} checkpoint, which has no VQ-VAE; codec: vqvae supports the "
            f"model types {', '.join(sorted(VQ_CLASSES))}."
        )
    return model_type


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = {file for key, file in weight_map.items() if key.startswith(VQ_PREFIXES)}
        return [folder / name for name in sorted(names)]
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{folder} has neither model.safetensors nor model.safetensors.index.json.")


def read_vq_state_dict(folder: str | Path) -> dict[str, torch.Tensor]:
    """The VQ-VAE tensors of a checkpoint folder, keyed as in the VQ module itself (prefix removed)."""
    folder = Path(folder).expanduser()
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                prefix = next((p for p in VQ_PREFIXES if key.startswith(p)), None)
                if prefix is not None:
                    state[key[len(prefix):]] = handle.get_tensor(key)
    if not state:
        raise ValueError(f"no VQ-VAE weights ({' or '.join(p + '*' for p in VQ_PREFIXES)}) found in {folder}")
    return state


def load_vqmodel(folder: str | Path) -> tuple[str, torch.nn.Module]:
    """``(model_type, vq)``: the checkpoint's VQ-VAE with its weights, in eval mode without gradients."""
    folder = Path(folder).expanduser()
    model_type = _model_type(folder)
    import transformers  # deferred: the model classes take seconds to import and most codecs never need them

    # The family config fills in derived fields (JanusConfig sets vq_config.num_patches from the vision config).
    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):  # the weights come from the file; skip the random init
        vq = getattr(transformers, VQ_CLASSES[model_type])(config.vq_config)
    state = read_vq_state_dict(folder)
    try:
        vq.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:
        raise ValueError(f"the VQ-VAE weights in {folder} do not fit its config.json: {error}") from error
    left = [name for name, tensor in (*vq.named_parameters(), *vq.named_buffers()) if tensor.is_meta]
    if left:  # a non-persistent buffer that this transformers version adds would stay unset
        raise RuntimeError(f"the {model_type} VQ-VAE has tensors that no checkpoint holds: {', '.join(left)}")
    vq.eval().requires_grad_(False)
    return model_type, vq


class VQVAECodec(VisualCodec):
    """Encode/decode with a Janus or Emu3 checkpoint's own VQ-VAE (``path`` is the checkpoint folder).

    ``downsample`` is the VQ's spatial factor (16 for Janus-Pro, 8 for Emu3). Pixels are ``[-1,1]`` on both
    sides, as the families' image processors (mean = std = 0.5) produce and their decoders emit.
    """

    def __init__(self, path: str | Path, device: torch.device | str | None = None,
                 dtype: torch.dtype | str | None = None):
        self.path = Path(path).expanduser()
        self.model_type, self.vq = load_vqmodel(self.path)
        vq_config = self.vq.config
        if self.model_type == "janus":
            self.codebook_size = int(vq_config.num_embeddings)
        else:
            self.codebook_size = int(vq_config.codebook_size)
        self.downsample = 2 ** (len(vq_config.channel_multiplier) - 1)
        self.device = torch.device(device if device is not None else "cpu")
        self.dtype = resolve_dtype(dtype, self.device)
        self.vq.to(device=self.device, dtype=self.dtype)

    def __repr__(self) -> str:
        return (f"VQVAECodec(path={str(self.path)!r}, model_type={self.model_type!r}, "
                f"device={self.device}, dtype={self.dtype})")

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | str | None = None) -> "VQVAECodec":
        """Move the VQ-VAE to ``device`` and/or cast it to ``dtype``; returns self."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = resolve_dtype(dtype, self.device)
        self.vq.to(device=self.device, dtype=self.dtype)
        return self

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B,3,H,W]`` in ``[-1,1]`` to codes ``[B,H/downsample,W/downsample]`` (int64)."""
        h, w = check_pixels(pixels, self.downsample, f"vqvae ({self.model_type})")
        batch = pixels.to(self.device, self.dtype)
        if self.model_type == "janus":
            codes = self._janus_encode(batch)
        else:
            sizes = [tuple(pixels.shape[-2:])] * pixels.shape[0]
            codes = torch.stack(self.vq.encode(batch, sizes, return_dict=True).image_tokens)
        codes = codes.reshape(pixels.shape[0], h, w).long()
        check_code_range(codes, self.codebook_size, f"codes from the {self.model_type} VQ-VAE encoder")
        return codes.to(pixels.device)

    def _janus_encode(self, pixels: torch.Tensor) -> torch.Tensor:
        # Janus's VQ (LlamaGen, codebook_l2_norm) picks codes by cosine similarity, which is also the geometry
        # its decoder uses (get_codebook_entry L2-normalises). transformers' quantizer takes the plain L2
        # nearest row of the un-normalised codebook instead; both agree only when every row has unit norm.
        latent = self.vq.quant_conv(self.vq.encoder(pixels))  # [B, C, h, w]
        latent = F.normalize(latent.permute(0, 2, 3, 1).float(), dim=-1)
        codebook = F.normalize(self.vq.quantize.embedding.weight.float(), dim=-1)
        return (latent @ codebook.T).argmax(-1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes ``[B,h,w]`` to pixels ``[B,3,h*downsample,w*downsample]`` in ``[-1,1]`` (float32)."""
        check_codes(codes, self.codebook_size, f"vqvae ({self.model_type})")
        batch = codes.to(self.device, torch.long)
        if self.model_type == "janus":
            pixels = self._janus_decode(batch)
        else:
            pixels = self.vq.decode(batch)
        expected = (codes.shape[0], 3, *self.resolution_for(tuple(codes.shape[-2:])))
        if tuple(pixels.shape) != expected:
            raise RuntimeError(f"the {self.model_type} VQ-VAE decoded {tuple(pixels.shape)}, expected {expected}")
        return pixels.float().clamp(-1, 1).to(codes.device)

    def _janus_decode(self, codes: torch.Tensor) -> torch.Tensor:
        # JanusVQVAE.decode reshapes the flat tokens to quantize.quant_state_dims (the checkpoint's square
        # grid); the decoder itself is convolutional, so any (h, w) works once the dims are set for the call.
        quantize = self.vq.quantize
        saved = quantize.quant_state_dims
        quantize.quant_state_dims = [codes.shape[1], codes.shape[2]]
        try:
            return self.vq.decode(codes.flatten(1))
        finally:
            quantize.quant_state_dims = saved
