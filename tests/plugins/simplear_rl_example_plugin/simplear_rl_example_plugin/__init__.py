"""An example simplear-rl reward plugin: one function reward and one class reward."""

import torch

from rewards import Reward, register_reward


@register_reward("example_brightness")
def brightness(images, prompts, target: float = 0.5):
    """1 - |mean brightness - target|: prefers images whose average grey level is near `target`."""
    return 1.0 - (images.mean(dim=(1, 2, 3)) - target).abs()


@register_reward("example_palette", required_fields=["objects"], batch_size=16, threshold=1.0)
class PaletteCoverage(Reward):
    """Fraction of the colours a prompt names that cover at least `min_fraction` of the image.

    A class keeps what it builds once (here a tolerance tensor; in a real plugin, a model).
    """

    def __init__(self, min_fraction: float = 0.01, tolerance: float = 42.0, **kwargs):
        super().__init__(**kwargs)  # batch_size, device
        self.min_fraction = min_fraction
        self.tolerance = torch.tensor(tolerance / 255.0, device=self.device)

    def score_batch(self, images, prompts, objects, **metadata):
        scores = []
        for image, row in zip(images, objects):
            colours = {tuple(obj["rgb"]) for obj in row}
            present = 0
            for rgb in colours:
                target = torch.tensor(rgb, dtype=image.dtype, device=image.device).view(3, 1, 1) / 255.0
                covered = ((image - target).abs() <= self.tolerance).all(dim=0).float().mean()
                present += int(covered >= self.min_fraction)
            scores.append(present / len(colours) if colours else 0.0)
        return torch.tensor(scores)
