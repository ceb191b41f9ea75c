"""Private helpers shared by the post-processing kernels.

Everything here is written so that one sample's result never depends on the rest of the batch: per-sample
work is elementwise, filters are shift-and-add loops over taps, and reductions run in a fixed pairwise order.
Torch's own reductions and convolutions choose their split by the total tensor size, so a sample's bits could
change with the batch it was grouped into.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "REC601",
    "REC709",
    "check_choice",
    "check_image",
    "check_int",
    "correlate",
    "gaussian_taps",
    "luma",
    "packed_rgb",
    "pairwise_sum",
    "per_sample",
    "reflect_pad",
    "sample_mean",
    "separable_filter",
    "unpacked_rgb",
    "upcast",
]

REC601 = (0.299, 0.587, 0.114)
REC709 = (0.2126, 0.7152, 0.0722)

# Smallest pixel sigma a gaussian is built with: far below one pixel the kernel is already a unit impulse,
# and a zero sigma would make the centre tap 0/0.
_MIN_SIGMA = 1e-3


def check_image(image: Tensor, name: str = "image") -> None:
    """Raise ``ValueError`` unless ``image`` is a non-empty floating ``(B, 3, H, W)`` tensor."""
    if not isinstance(image, Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"`{name}` must have shape (B, 3, H, W), got {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {image.dtype}")
    if image.numel() == 0:
        raise ValueError(f"`{name}` must not be empty, got shape {tuple(image.shape)}")


def check_int(value: int, name: str, low: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is a plain ``int``, no smaller than ``low`` when given."""
    if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
        raise ValueError(f"`{name}` must be an int{'' if low is None else f' >= {low}'}, got {value!r}")


def check_choice(value: str, choices: Sequence[str], name: str) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")


def upcast(image: Tensor) -> Tensor:
    """Return ``image`` in float32 if it is float16/bfloat16, else unchanged: kernels compute in at least float32."""
    return image.float() if image.dtype in (torch.float16, torch.bfloat16) else image


def per_sample(value: float | Tensor, image: Tensor, name: str) -> Tensor:
    """Return a float or a ``(B,)`` tensor as a ``(B, 1, 1, 1)`` tensor on ``image``'s device and dtype."""
    batch = image.shape[0]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # Filled on the device: a host tensor copied to the GPU would wait for the queued kernels.
        return torch.full((batch, 1, 1, 1), float(value), dtype=image.dtype, device=image.device)
    if not isinstance(value, Tensor) or value.shape not in ((), (batch,)):
        got = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, Tensor) else repr(value)
        raise ValueError(f"`{name}` must be a float or a tensor of shape ({batch},), got {got}")
    return value.to(device=image.device, dtype=image.dtype).expand(batch).reshape(batch, 1, 1, 1)


def luma(image: Tensor, weights: tuple[float, float, float]) -> Tensor:
    """Weighted sum of the R, G, B planes of ``(B, 3, H, W)`` as ``(B, 1, H, W)``."""
    return image[:, 0:1] * weights[0] + image[:, 1:2] * weights[1] + image[:, 2:3] * weights[2]


def packed_rgb(rgb: Tensor) -> Tensor:
    """``(..., 3, H, W)`` integer colours -> ``(..., H, W)`` int32 ``0xRRGGBB``: one key a colour, in colour order
    (int32 holds 24 bits, and sorts and finds unique keys about twice as fast as int64)."""
    rgb = rgb.int()
    return (rgb[..., 0, :, :] << 16) | (rgb[..., 1, :, :] << 8) | rgb[..., 2, :, :]


def unpacked_rgb(keys: Tensor) -> Tensor:
    """The inverse of `packed_rgb`, the channels at dim 1: ``(N,)`` -> ``(N, 3)``, ``(B, H, W)`` -> ``(B, 3, H, W)``."""
    return torch.stack([(keys >> 16) & 255, (keys >> 8) & 255, keys & 255], 1)


def pairwise_sum(values: Tensor) -> Tensor:
    """Sum over the last dimension in a fixed pairwise order, keeping it as size 1.

    The order depends only on the length of that dimension, so each row's result is the same in any batch.
    """
    length = values.shape[-1]
    width = 1 << max(length - 1, 0).bit_length()
    values = torch.nn.functional.pad(values, (0, width - length))
    while width > 1:
        width //= 2
        values = values[..., :width] + values[..., width:]
    return values


def sample_mean(values: Tensor) -> Tensor:
    """Mean of each sample of a ``(B, ...)`` tensor as ``(B, 1, 1, 1)``, batch-invariant (see `pairwise_sum`)."""
    flat = values.reshape(values.shape[0], -1)
    return (pairwise_sum(flat) / flat.shape[1]).view(-1, 1, 1, 1)


def _reflect_index(size: int, pad: int, device: torch.device) -> Tensor:
    index = torch.arange(-pad, size + pad, device=device)
    period = max(2 * (size - 1), 1)
    index = index.remainder(period)
    return torch.where(index < size, index, period - index)


def reflect_pad(image: Tensor, pad_h: int, pad_w: int) -> Tensor:
    """Pad the last two dimensions by mirroring without repeating the edge (reflect-101, OpenCV's default).

    Unlike ``F.pad(mode="reflect")`` the pad may exceed the image size: the mirroring repeats periodically,
    as ``numpy.pad(mode="reflect")`` does, so any radius works on any image.
    """
    rows = _reflect_index(image.shape[-2], pad_h, image.device)
    cols = _reflect_index(image.shape[-1], pad_w, image.device)
    return image.index_select(-2, rows).index_select(-1, cols)


def correlate(image: Tensor, taps: Tensor, dim: int) -> Tensor:
    """Valid 1-D correlation ``out[i] = sum_k taps[k] * image[i + k]`` along ``dim`` of a ``(B, C, H, W)`` tensor.

    ``taps`` is ``(N, K)`` with ``N`` either 1 (shared) or ``B`` (one kernel per sample); the output is ``K - 1``
    shorter along ``dim``. Each output element is the same sequence of IEEE multiplies and adds whatever the batch,
    which convolution kernels do not promise.
    """
    count = taps.shape[-1]
    length = image.shape[dim] - count + 1
    weights = taps.t().reshape(count, -1, 1, 1, 1)
    out = image.narrow(dim, 0, length) * weights[0]
    for k in range(1, count):
        out = out + image.narrow(dim, k, length) * weights[k]
    return out


def separable_filter(image: Tensor, taps: Tensor) -> Tensor:
    """Filter rows then columns with the same odd-length ``(N, K)`` taps, reflect-101 borders, same size out."""
    radius = taps.shape[-1] // 2
    padded = reflect_pad(image, radius, radius)
    return correlate(correlate(padded, taps, -2), taps, -1)


def gaussian_taps(sigma: Tensor, radius: int) -> Tensor:
    """Normalised gaussian ``exp(-i^2 / (2 sigma^2))`` for ``i`` in ``[-radius, radius]``, as ``(B, 2 radius + 1)``.

    ``sigma`` is in pixels, any shape holding ``B`` values; it is floored at a thousandth of a pixel, where the
    kernel is already a unit impulse.
    """
    sigma = sigma.reshape(-1, 1).clamp_min(_MIN_SIGMA)
    offsets = torch.arange(-radius, radius + 1, device=sigma.device, dtype=sigma.dtype)
    z = offsets / sigma
    taps = torch.exp(-0.5 * (z * z))
    return taps / pairwise_sum(taps)
