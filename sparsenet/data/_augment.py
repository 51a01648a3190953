"""Augmentation of in-memory image batches, drawn from the loader's per-epoch generator.

The MNIST family and the cached CIFAR-10 are held as normalised tensors (no per-sample PIL
transforms), so their augmentation is a batch operation: `RandomShift` (MNIST) translates each
image by (dy, dx), drawn uniformly from -k..k, filling the uncovered border with the background
value; `RandomCropFlip` (CIFAR-10) is pad + random crop + horizontal flip. Drawing from the
loader's generator (seeded with seed + epoch) keeps runs deterministic and resumable, and the
loader augments the whole global batch before cutting a process's part, so data-parallel runs
see the draws of a single process.
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


@dataclass(frozen=True)
class RandomCropFlip:
    """Pad by `padding` pixels with `fill`, crop back to the input size at a random offset,
    then flip horizontally with probability 1/2: the CIFAR augmentation of He et al. 2016
    (Sec. 4.2, padding 4), on a whole N x C x H x W batch.

    With P the batch padded by p = `padding` on each side (value `fill`, one per channel or
    one for all), offsets (dy_i, dx_i) drawn uniformly from 0..2p and flip_i from {0, 1}:
        x'[i, :, r, c] = P[i, :, r + dy_i, c_i + dx_i],  c_i = W - 1 - c if flip_i else c.
    This is torchvision's RandomCrop(H, padding=p) then RandomHorizontalFlip on a PIL image
    (pad, crop at (dy, dx), flip), applied to the batch after ToTensor + Normalize: those act
    pixel by pixel, so padding the raw image with black equals padding the normalised one with
    fill = (0 - mean) / std, channel by channel, to the bit.
    """

    padding: int
    fill: tuple[float, ...] | float = 0.0

    def draw(
        self, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The random part for n images: (dy, dx, flip), each of length n, drawn in that order
        from `generator` (what `__call__` draws)."""
        dy, dx = torch.randint(0, 2 * self.padding + 1, (2, n), generator=generator)
        flip = torch.randint(0, 2, (n,), generator=generator).bool()
        return dy, dx, flip

    def apply(
        self, images: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
    ) -> torch.Tensor:
        """The crop and flip of the class docstring with the given offsets and flips."""
        n, channels, height, width = images.shape
        p = self.padding
        device = images.device
        fill = torch.as_tensor(self.fill, dtype=images.dtype, device=device).reshape(1, -1, 1, 1)
        padded = images.new_empty((n, channels, height + 2 * p, width + 2 * p))
        padded.copy_(fill.expand_as(padded))
        padded[:, :, p : p + height, p : p + width] = images
        rows = dy.to(device)[:, None] + torch.arange(height, device=device)  # n x H
        cols = torch.arange(width, device=device).expand(n, width)
        cols = (
            torch.where(flip.to(device, torch.bool)[:, None], width - 1 - cols, cols)
            + dx.to(device)[:, None]
        )
        # One gather: out[i, k, r, c] = padded[i, k, rows[i, r], cols[i, c]].
        return padded[
            torch.arange(n, device=device)[:, None, None, None],
            torch.arange(channels, device=device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]

    def __post_init__(self) -> None:
        if self.padding < 0:
            raise ValueError(f"padding={self.padding} must be >= 0")

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, *self.draw(len(images), generator))
