"""Exact folding of removed constant inputs into a zero-padded convolution.

When input channel r of a conv q carries a constant c_r (its producer's incoming weights are
zero, so it emits act(bias) or act(BatchNorm shift)), removing r changes q's output by
    delta[o, i, j] = sum_r c_r sum_(kh,kw) W[o, r, kh, kw] * M[i s + kh d - p, j s + kw d - p]
where M is 1 inside the input and 0 in the zero padding. In the interior (the whole receptive
field inside the input) M = 1 and delta is the per-channel constant sum(K[o]); at the
borders it is not. Written with the *fold kernel*
    K[o, 0, kh, kw] = sum_r c_r W[o, r, kh, kw]            (one input channel)
delta is exactly conv2d(ones(1, 1, H, W), K) with q's stride, padding and dilation. So:
    bias[o]   += sum(K[o])                                  (the interior value)
    border    =  conv2d(ones(H, W), K) - sum(K)             (zero in the interior)
and `FoldedConv2d` adds `border` to its output. The correction is computed from the input's
actual size at run time (cached per size), so it is exact at any input resolution, not only
the calibration one; the only state is K, shape (C_out, 1, kh, kw).

Design choice (documented): the conv keeps its module name and parameter names (FoldedConv2d
subclasses `nn.Conv2d` and adds one buffer, `fold_kernel`), so layer names, regularizer
patterns, `isinstance(m, nn.Conv2d)` checks and reports do not change. torch-pruning must slice `fold_kernel` when the conv's out-channels are
pruned later: every graph sparsenet builds registers `FoldedConvPruner` for it
(`customized_pruners()`). A graph built without it still traces and groups correctly (the conv
is seen as a Conv2d), but pruning it there leaves `fold_kernel` stale; `forward` then raises.

Limits: exact for inputs that are constant over space (dead incoming weights); for a removed
input that varies (ratio pruning of live units) this is mean replacement: the channel is
replaced by its calibration mean, at the borders too. Only `padding_mode="zeros"` needs it (a
constant input padded by reflection, replication or wrapping stays constant). The border add
is one element-wise pass over the conv output when gradients are on; in inference it touches
only the frame of border positions, in place. `measure.count_macs` does not count it.
An ONNX export stores the border for the export's spatial size (`checkpoint.export_onnx`).
A unit of a FoldedConv2d with a non-zero row of K is not dead even when its weights are zero
(its output still varies at the borders): `remove.py` counts K in the unit's incoming norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch import nn

WHOLE_MAP_ADD_BELOW = 1 << 16  # output elements: below, one add beats four frame-slice adds


def needs_border_correction(conv: nn.Conv2d) -> bool:
    """True when a constant input does not give a constant output: zero padding > 0."""
    if conv.padding_mode != "zeros":
        return False
    if isinstance(conv.padding, str):
        return conv.padding == "same" and any(k > 1 for k in conv.kernel_size)
    return any(p > 0 for p in conv.padding)


class FoldedConv2d(nn.Conv2d):
    """nn.Conv2d plus the border term of removed constant inputs (see the module docstring)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        kh, kw = self.kernel_size
        self.register_buffer(
            "fold_kernel", torch.zeros(self.out_channels, 1, kh, kw, dtype=self.weight.dtype)
        )
        self._border_cache: dict = {}

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, fold_kernel: torch.Tensor | None = None) -> FoldedConv2d:
        """A FoldedConv2d sharing `conv`'s parameters (same names, same tensors)."""
        folded = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=conv.bias is not None,
            padding_mode=conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        folded.weight = conv.weight
        folded.bias = conv.bias
        if isinstance(conv, FoldedConv2d):
            folded.fold_kernel = conv.fold_kernel
        if fold_kernel is not None:
            folded.fold_kernel = fold_kernel.to(folded.fold_kernel).clone()
        folded.train(conv.training)
        return folded

    def _compute_terms(self, height: int, width: int):
        """The border map for an input of height x width and its frame (top, bottom, left,
        right): the output rows / columns whose window reaches into the padding; outside the
        frame the map is exactly zero. The frame is None where it covers most of the map."""
        kernel = self.fold_kernel
        if kernel.shape[0] != self.out_channels:
            raise RuntimeError(
                f"FoldedConv2d: fold_kernel has {kernel.shape[0]} rows but the conv has "
                f"{self.out_channels} out-channels; prune it with a DependencyGraph that has "
                "sparsenet.pruning.customized_pruners() registered"
            )
        ones = torch.ones(1, 1, height, width, dtype=kernel.dtype, device=kernel.device)
        geometry = (self.stride, self.padding, self.dilation)
        full = F.conv2d(ones, kernel, None, *geometry)[0]
        # Positions whose whole window lies inside the input (counts are exact integers).
        window = torch.ones(1, 1, *self.kernel_size, dtype=kernel.dtype, device=kernel.device)
        inside = F.conv2d(ones, window, None, *geometry)[0, 0] == window.numel()
        border = torch.where(inside, 0.0, full - kernel.sum(dim=(1, 2, 3))[:, None, None])
        if torch.jit.is_tracing() or torch.compiler.is_compiling() or not inside.any():
            return border, None
        rows = inside.any(1).nonzero().flatten().tolist()
        cols = inside.any(0).nonzero().flatten().tolist()
        out_h, out_w = inside.shape
        top, bottom = rows[0], out_h - 1 - rows[-1]
        left, right = cols[0], out_w - 1 - cols[-1]
        framed = (top + bottom) * out_w + (left + right) * (out_h - top - bottom)
        return border, ((top, bottom, left, right) if 2 * framed <= out_h * out_w else None)

    def _terms(self, height: int, width: int):
        """`_compute_terms`, cached for the last input size (and this fold kernel)."""
        kernel = self.fold_kernel
        key = (height, width, kernel.device, kernel.dtype, kernel.data_ptr(), kernel._version)
        cached = self._border_cache.get(key)
        if cached is None:
            cached = self._compute_terms(height, width)
            self._border_cache.clear()  # one size at a time: cheap to rebuild, never stale
            self._border_cache[key] = cached
        return cached

    def border(self, height: int, width: int) -> torch.Tensor:
        """conv2d(ones(height, width), K) - sum(K): (C_out, H_out, W_out), zero inside."""
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return self._compute_terms(height, width)[0]
        return self._terms(height, width)[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if torch.is_grad_enabled() or torch.jit.is_tracing() or torch.compiler.is_compiling():
            return out + self.border(x.shape[-2], x.shape[-1]).to(out.dtype)
        # Inference: add in place; on large outputs only on the frame (the interior is zero),
        # on small ones in one operation (four slice adds cost more than they save there).
        border, frame = self._terms(x.shape[-2], x.shape[-1])
        if border.dtype != out.dtype:
            border = border.to(out.dtype)
        if frame is None or out.numel() <= WHOLE_MAP_ADD_BELOW:
            return out.add_(border)
        top, bottom, left, right = frame
        bottom_row, right_col = out.shape[-2] - bottom, out.shape[-1] - right
        out[..., :top, :] += border[:, :top, :]
        out[..., bottom_row:, :] += border[:, bottom_row:, :]
        out[..., top:bottom_row, :left] += border[:, top:bottom_row, :left]
        out[..., top:bottom_row, right_col:] += border[:, top:bottom_row, right_col:]
        return out


class FoldedConvPruner(tp.pruner.function.ConvPruner):
    """torch-pruning's Conv2d pruner that also slices `fold_kernel` with the out-channels."""

    def prune_out_channels(self, layer: nn.Module, idxs) -> nn.Module:
        keep = sorted(set(range(layer.out_channels)) - set(int(i) for i in idxs))
        super().prune_out_channels(layer, idxs)
        index = torch.as_tensor(keep, dtype=torch.long, device=layer.fold_kernel.device)
        layer.fold_kernel = layer.fold_kernel.index_select(0, index).contiguous()
        layer._border_cache.clear()
        return layer


_PRUNER = FoldedConvPruner()


def customized_pruners() -> dict[type, tp.pruner.function.BasePruningFunc]:
    """Pass as `build_dependency(..., customized_pruners=customized_pruners())`."""
    return {FoldedConv2d: _PRUNER}
