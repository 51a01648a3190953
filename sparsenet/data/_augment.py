"""Augmentation of in-memory image batches, drawn from the loader's per-epoch generator.

The MNIST family is held as normalised tensors (no per-sample PIL transforms), so its
augmentation is a batch operation: `RandomShift` translates each image by (dy, dx), drawn
uniformly from -k..k, filling the uncovered border with the background value. Drawing from the
loader's generator (seeded with seed + epoch) keeps runs deterministic and resumable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class RandomShift:
    """x'[i, :, r, c] = x[i, :, r - dy_i, c - dx_i] (fill where that falls outside the image)."""

    max_shift: int
    fill: float = 0.0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        k = self.max_shift
        if k == 0:
            return images
        n, _, height, width = images.shape
        padded = F.pad(images, (k, k, k, k), value=self.fill)
        offsets = torch.randint(0, 2 * k + 1, (2, n), generator=generator).to(images.device)
        # Output pixel (r, c) reads padded (r + k - dy, c + k - dx); offset = k - d in 0..2k.
        rows = offsets[0, :, None] + torch.arange(height, device=images.device)
        cols = offsets[1, :, None] + torch.arange(width, device=images.device)
        batch = torch.arange(n, device=images.device)[:, None, None]
        shifted = padded[batch, :, rows[:, :, None], cols[:, None, :]]  # n x H x W x C
        return shifted.permute(0, 3, 1, 2).contiguous()
