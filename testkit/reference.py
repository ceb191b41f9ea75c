"""NumPy references of every post-processing effect, written from the formulas without calling the kernels.

The oracles of `tests/kernels` and the CPU baseline of `bench/post_processing`. Images are float64
`(B, 3, H, W)` arrays in [0, 1]; per-sample parameters are sequences of length B. Film grain is the one
exception to independence: it takes the kernel's own random draws, so that both add the same grain.
Listed in the order of the post-processing chain.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kernels.grain import _draw_gradient_words

# Kiln's presets as documented: blur sigma, colour share, amplitude (a0, a1, a2), gains, desaturate, contrast.
MIDTONES = (0.5, 2.0, -2.0)
STYLES = {
    "modern": (0.0, 0.0, (1.0, 0.0, 0.0), (1.0, 1.0, 1.0), 0.0, 1.0),
    "analog": (1.0, 0.3, MIDTONES, (1.0, 1.0, 1.0), 0.0, 1.0),
    "kodak": (0.7, 0.15, MIDTONES, (1.03, 1.0, 0.97), 0.0, 1.0),
    "fuji": (0.6, 0.15, MIDTONES, (0.98, 1.02, 1.02), 0.0, 1.0),
    "cinematic": (0.8, 0.0, (1.25, -0.75, 0.0), (1.0, 1.0, 1.0), 0.0, 1.0),
    "newspaper": (1.5, 0.0, (1.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0, 1.3),
}
GRADIENTS = np.array([(1, 1), (-1, 1), (1, -1), (-1, -1)])


def unpack(words: np.ndarray) -> np.ndarray:
    """(..., H, W) int32 words -> (..., 4 octaves, 4 corners, H, W) choices: octave o, corner c at bit 2 (4 o + c)."""
    shifts = 2 * np.arange(16).reshape(4, 4, 1, 1)
    return (words[..., None, None, :, :] >> shifts) & 3


def reference_base_noise(choices: np.ndarray, scale: float) -> np.ndarray:
    """The reference's FilmGrain noise for choices (F, 4, 4, H, W) -> (F, H, W) in [-1, 1]."""
    height, width = choices.shape[-2:]
    x, y = np.linspace(0, 1, width, endpoint=False), np.linspace(0, 1, height, endpoint=False)
    total = np.zeros((choices.shape[0], height, width))
    for octave in range(4):
        cells = scale * 2**octave
        grid_x, grid_y = np.meshgrid(x * cells, y * cells)
        xf, yf = grid_x - np.floor(grid_x), grid_y - np.floor(grid_y)
        u, v = xf * xf * (3 - 2 * xf), yf * yf * (3 - 2 * yf)
        g = GRADIENTS[choices[:, octave]]  # (F, 4 corners, H, W, 2)
        n00 = g[:, 0, ..., 0] * xf + g[:, 0, ..., 1] * yf
        n01 = g[:, 1, ..., 0] * xf + g[:, 1, ..., 1] * (yf - 1)
        n10 = g[:, 2, ..., 0] * (xf - 1) + g[:, 2, ..., 1] * yf
        n11 = g[:, 3, ..., 0] * (xf - 1) + g[:, 3, ..., 1] * (yf - 1)
        x1, x2 = n00 + u * (n10 - n00), n01 + u * (n11 - n01)
        total += (x1 + v * (x2 - x1)) * 0.5**octave
    total /= 1 - 0.5**4
    low, high = total.min((1, 2), keepdims=True), total.max((1, 2), keepdims=True)
    return 2 * (total - low) / (high - low) - 1


def reference_blur(noise: np.ndarray, sigma: float) -> np.ndarray:
    radius = math.ceil(3 * sigma)
    taps = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
    padded = np.pad(noise, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    height, width = noise.shape[-2:]
    size = 2 * radius + 1
    blurred = sum(kernel[i, j] * padded[:, i : i + height, j : j + width] for i in range(size) for j in range(size))
    mean, blurred_mean = noise.mean((1, 2), keepdims=True), blurred.mean((1, 2), keepdims=True)
    return mean + (blurred - blurred_mean) * (noise.std((1, 2), keepdims=True) / blurred.std((1, 2), keepdims=True))


def luma709(x: np.ndarray) -> np.ndarray:
    return 0.2126 * x[0:1] + 0.7152 * x[1:2] + 0.0722 * x[2:3]


def reference_grain(image: np.ndarray, intensities, scales, style: str, seeds) -> np.ndarray:
    blur, color, (a0, a1, a2), gains, desaturate, contrast = STYLES[style]
    fields = 4 if color > 0 else 1
    words = _draw_gradient_words(seeds, fields, image.shape[2], image.shape[3], torch.device("cpu")).numpy()
    out = np.empty_like(image)
    for b, x in enumerate(image):
        intensity = intensities[b]
        look = min(intensity / 0.4, 1.0)
        noise = reference_base_noise(unpack(words[b]), scales[b])
        if blur > 0:
            noise = reference_blur(noise, blur)
        grain = noise if fields == 1 else math.sqrt(1 - color) * noise[:1] + math.sqrt(color) * noise[1:]
        toned = x + look * desaturate * (luma709(x) - x)
        toned = np.clip(toned + look * (contrast - 1) * (toned - 0.5), 0, 1)
        y = luma709(toned)
        grainy = toned + intensity * (a0 + a1 * y + a2 * y * y) * grain
        cast = 1 + look * (np.array(gains) - 1)
        out[b] = np.clip(grainy * cast[:, None, None], 0, 1)
    return out


def reference_color(image: np.ndarray, temperature, brightness, contrast, saturation, gamma) -> np.ndarray:
    """Per-sample parameters as sequences; saturation through a real HLS round trip (colorsys's formulas)."""
    out = np.empty_like(image)
    for b in range(image.shape[0]):
        x = np.clip(image[b] * (1 + brightness[b] / 100), 0, 1)
        mean = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]).mean()
        x = np.clip(mean + (1 + contrast[b] / 100) * (x - mean), 0, 1)
        t = temperature[b] / 100
        gains = (1 + t, 1 + 0.4 * t, 1.0) if t > 0 else (1.0, 1.0, 1 - t)
        x = np.clip(x * np.array(gains)[:, None, None], 0, 1)
        x = np.clip(x**gamma[b], 0, 1)
        hue, lightness, sat = rgb_to_hls(x)
        out[b] = np.clip(hls_to_rgb(hue, lightness, np.clip(sat * (1 + saturation[b] / 100), 0, 1)), 0, 1)
    return out


def rgb_to_hls(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """colorsys.rgb_to_hls on every pixel of (3, ...): hue, lightness, saturation, each (...)."""
    r, g, b = rgb
    high, low = rgb.max(0), rgb.min(0)
    lightness = (high + low) / 2
    spread = high - low
    grey = spread == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        saturation = np.where(lightness <= 0.5, spread / (high + low), spread / (2 - high - low))
        rc, gc, bc = ((high - c) / spread for c in (r, g, b))
    hue = np.select([r == high, g == high], [bc - gc, 2 + rc - bc], 4 + gc - rc)
    return np.where(grey, 0.0, (hue / 6) % 1), lightness, np.where(grey, 0.0, saturation)


def hls_to_rgb(hue: np.ndarray, lightness: np.ndarray, saturation: np.ndarray) -> np.ndarray:
    """colorsys.hls_to_rgb on every pixel: (...) planes -> (3, ...)."""
    m2 = np.where(lightness <= 0.5, lightness * (1 + saturation), lightness + saturation - lightness * saturation)
    m1 = 2 * lightness - m2

    def channel(h: np.ndarray) -> np.ndarray:
        h = h % 1
        rising, falling = m1 + (m2 - m1) * h * 6, m1 + (m2 - m1) * (2 / 3 - h) * 6
        return np.select([h < 1 / 6, h < 0.5, h < 2 / 3], [rising, m2, falling], m1)

    return np.stack([channel(hue + 1 / 3), channel(hue), channel(hue - 1 / 3)])


def reference_shift(image: np.ndarray, moves) -> np.ndarray:
    """Horizontal +s: out[y, x] = in[y, x - s]; vertical +s: out[y, x] = in[y + s, x]; indices clamped."""
    _, _, height, width = image.shape
    out = np.empty_like(image)
    for c, (shift, direction) in enumerate(moves):
        if direction == "horizontal":
            out[:, c] = image[:, c][:, :, np.clip(np.arange(width) - shift, 0, width - 1)]
        else:
            out[:, c] = image[:, c][:, np.clip(np.arange(height) + shift, 0, height - 1), :]
    return out


def reference_gaussian(image: np.ndarray, radius: int, sigmas: np.ndarray) -> np.ndarray:
    """2-D kernel on normalised offsets linspace(-1, 1, 2r+1), mirrored borders (numpy 'reflect')."""
    batch, _, height, width = image.shape
    out = np.empty_like(image)
    offsets = np.linspace(-1.0, 1.0, 2 * radius + 1)
    for b in range(batch):
        taps = np.exp(-(offsets**2) / (2 * sigmas[b] ** 2))
        kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
        padded = np.pad(image[b], ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
        out[b] = sum(
            kernel[i, j] * padded[:, i : i + height, j : j + width]
            for i in range(2 * radius + 1)
            for j in range(2 * radius + 1)
        )
    return np.clip(out, 0, 1)


def reference_kuwahara(image: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Means (4, B, 3, H, W) and grey variances (4, B, 1, H, W) of the four quadrants, in index order."""
    _, _, height, width = image.shape
    r = radius
    grey = 0.299 * image[:, 0:1] + 0.587 * image[:, 1:2] + 0.114 * image[:, 2:3]
    planes = np.pad(np.concatenate([image, grey], 1), ((0, 0), (0, 0), (r, r), (r, r)), mode="reflect")
    means, variances = [], []
    # (column offset, row offset) of each quadrant's first pixel: x..x+r/y..y+r, x..x+r/y-r..y, x-r..x/y..y+r, ...
    for col0, row0 in ((0, 0), (0, -r), (-r, 0), (-r, -r)):
        window = np.stack(
            [
                planes[:, :, r + row0 + i : r + row0 + i + height, r + col0 + j : r + col0 + j + width]
                for i in range(r + 1)
                for j in range(r + 1)
            ]
        )
        means.append(window[:, :, :3].mean(0))
        variances.append(window[:, :, 3:].var(0))
    return np.stack(means), np.stack(variances)


def reference_kuwahara_blur(image: np.ndarray, radius: int) -> np.ndarray:
    """Each pixel takes the mean of its quadrant with the lowest grey variance, the first on ties."""
    means, variances = reference_kuwahara(image, radius)
    chosen = np.argmin(variances, 0)[None].repeat(3, axis=2)
    return np.take_along_axis(means, chosen, 0)[0]


def reference_vignette(image: np.ndarray, strengths) -> np.ndarray:
    """The reference's Vignette: falloff linear in the normalised radius, strength clamped to [0, 1].

    Grid from ``linspace(-1, 1)`` on both axes (endpoints included), radius divided by its maximum (the corner
    pixels), ``clip(image * (1 - radius * clip(strength, 0, 1)), 0, 1)``. The grid is H x W (``xy`` indexing):
    the reference's ``ij`` grid is W x H and only works on square images, where the two agree.
    """
    _, _, height, width = image.shape
    grid_x, grid_y = np.meshgrid(np.linspace(-1, 1, width), np.linspace(-1, 1, height))
    radius = np.sqrt(grid_x**2 + grid_y**2)
    radius = radius / radius.max()
    strength = np.clip(np.asarray(strengths, dtype=np.float64), 0, 1)[:, None, None, None]
    return np.clip(image * (1 - radius * strength), 0, 1)


def reference_parabolize(image: np.ndarray, *params) -> np.ndarray:
    coeff, vertex_x, vertex_y = (np.asarray(p, dtype=np.float64).reshape(-1, 1, 1, 1) for p in params)
    return np.clip(coeff * (image - vertex_x) ** 2 + vertex_y, 0, 1)


# The research note's table (section 8), restated so that an edit to the kernel's table shows up here.
FACTORS = {
    "sepia": (1.0, 0.8, 0.6), "red": (1.0, 0.6, 0.6), "green": (0.6, 1.0, 0.6), "blue": (0.6, 0.8, 1.0),
    "cyan": (0.6, 1.0, 1.0), "magenta": (1.0, 0.6, 1.0), "yellow": (1.0, 1.0, 0.6), "purple": (0.8, 0.6, 1.0),
    "orange": (1.0, 0.7, 0.3), "warm": (1.0, 0.9, 0.7), "cool": (0.7, 0.9, 1.0), "lime": (0.7, 1.0, 0.3),
    "navy": (0.3, 0.4, 0.7), "vintage": (0.9, 0.85, 0.7), "rose": (1.0, 0.8, 0.9), "teal": (0.3, 0.8, 0.8),
    "maroon": (0.7, 0.3, 0.5), "peach": (1.0, 0.8, 0.6), "lavender": (0.8, 0.6, 1.0), "olive": (0.6, 0.7, 0.4),
}  # fmt: skip


def reference_tint(image: np.ndarray, strengths, mode: str) -> np.ndarray:
    strength = np.asarray(strengths, dtype=np.float64)[:, None, None, None]
    grey = 0.2989 * image[:, 0:1] + 0.5870 * image[:, 1:2] + 0.1140 * image[:, 2:3]
    tinted = grey * np.array(FACTORS[mode])[None, :, None, None]
    return np.clip(strength * tinted + (1 - strength) * image, 0, 1)


def reference_dissolve_draw(image: np.ndarray, other: np.ndarray, factors, rng: np.random.Generator) -> np.ndarray:
    """One output of the reference's Dissolve: ``mask = rand < factor`` per element (per channel too), then
    ``clip(image * mask + other * (1 - mask), 0, 1)``: ``factor`` is the probability of keeping ``image``."""
    factor = np.asarray(factors, dtype=np.float64)[:, None, None, None]
    mask = (rng.random(image.shape) < factor).astype(np.float64)
    return np.clip(image * mask + other * (1 - mask), 0, 1)


def reference_dissolve_average(image: np.ndarray, other: np.ndarray, factors, draws: int) -> np.ndarray:
    """The mean of the reference's random dissolve over seeds 0 .. draws - 1: a Monte-Carlo estimate of its
    expected output, with a standard error of at most ``0.5 / sqrt(draws)`` per element."""
    total = np.zeros_like(image)
    for seed in range(draws):
        total += reference_dissolve_draw(image, other, factors, np.random.default_rng(seed))
    return total / draws


def reference_dissolve(image: np.ndarray, other: np.ndarray, factors) -> np.ndarray:
    """The expected output of the reference's Dissolve: ``image`` kept with probability ``factor``, so
    ``factor * image + (1 - factor) * other`` (already in [0, 1], the clip changes nothing)."""
    factor = np.asarray(factors, dtype=np.float64)[:, None, None, None]
    return np.clip(factor * image + (1 - factor) * other, 0, 1)


def _triangle_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of antialiased linear resampling, half-pixel centres (PIL's bilinear filter)."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size)[:, None] + 0.5) * scale
    weights = np.maximum(0.0, 1 - np.abs((np.arange(in_size)[None, :] + 0.5 - centres) / support))
    return weights / weights.sum(1, keepdims=True)


def reference_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    rows = _triangle_weights(image.shape[2], size[0])
    cols = _triangle_weights(image.shape[3], size[1])
    return np.clip(np.einsum("yh,bchw,xw->bcyx", rows, image, cols, optimize=True), 0, 1)


def _divide_dodge(base: np.ndarray, mask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """The reference's dodge base / (1 - m i), without its 1e-7 guard; +inf where m i = 1."""
    with np.errstate(divide="ignore"):
        return base / (1 - mask * intensity)


def _step(x: np.ndarray, intensity: np.ndarray, step: str) -> np.ndarray:
    luma = np.clip(0.2126 * x[:, 0:1] + 0.7152 * x[:, 1:2] + 0.0722 * x[:, 2:3], 0, 1)
    out = {
        "dodge": lambda: _divide_dodge(x, luma, intensity),
        "burn": lambda: 1 - _divide_dodge(1 - x, 1 - luma, intensity),
        "color_dodge": lambda: _divide_dodge(x, x, intensity),
        "color_burn": lambda: 1 - _divide_dodge(1 - x, 1 - x, intensity),
        "linear_dodge": lambda: x + x * intensity,
        "linear_burn": lambda: x - x * intensity,
    }[step]()
    return np.clip(out, 0, 1)


def reference_dodge_burn(image: np.ndarray, intensities, mode: str) -> np.ndarray:
    intensity = np.asarray(intensities, dtype=np.float64)[:, None, None, None]
    steps = {"dodge_and_burn": ("dodge", "burn"), "burn_and_dodge": ("burn", "dodge")}.get(mode, (mode,))
    for step in steps:
        image = _step(image, intensity, step)
    return image


def reference_glow(image: np.ndarray, intensities, radius: int) -> np.ndarray:
    """2-D kernel on normalised offsets linspace(-1, 1, 2r+1) with sigma r/3, mirrored borders."""
    _, _, height, width = image.shape
    offsets = np.linspace(-1.0, 1.0, 2 * radius + 1)
    taps = np.exp(-(offsets**2) / (2 * (radius / 3) ** 2))
    kernel = np.outer(taps, taps) / np.outer(taps, taps).sum()
    padded = np.pad(image, ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="reflect")
    size = 2 * radius + 1
    blur = sum(kernel[i, j] * padded[..., i : i + height, j : j + width] for i in range(size) for j in range(size))
    intensity = np.asarray(intensities, dtype=np.float64)[:, None, None, None]
    return np.clip(image + intensity * blur, 0, 1)


def correlate2d(padded: np.ndarray, kernel: np.ndarray, height: int, width: int) -> np.ndarray:
    rows, cols = kernel.shape
    return sum(
        kernel[i, j] * padded[..., i : i + height, j : j + width] for i in range(rows) for j in range(cols)
    )


def reference_basic(image: np.ndarray, radius: int, alphas) -> np.ndarray:
    """The reference's kernel (-alpha everywhere) with its centre raised so that it sums to 1."""
    _, _, height, width = image.shape
    size = 2 * radius + 1
    padded = np.pad(image, ((0, 0), (0, 0), (radius, radius), (radius, radius)), mode="reflect")
    out = np.empty_like(image)
    for b, alpha in enumerate(alphas):
        kernel = np.full((size, size), -alpha)
        kernel[radius, radius] = 1 + alpha * (size * size - 1)
        out[b] = correlate2d(padded[b], kernel, height, width)
    return np.clip(out, 0, 1)


def reference_bilateral(image: np.ndarray, diameter: int, sigma_color: float) -> np.ndarray:
    """cv2.bilateralFilter for one float RGB image (3, H, W): disc window, L1 colour distance, reflect-101."""
    _, height, width = image.shape
    radius = max(diameter // 2, 1)
    sigma_space = 0.3 * ((diameter - 1) * 0.5 - 1) + 0.8
    padded = np.pad(image, ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    numerator, denominator = np.zeros_like(image), np.zeros((1, height, width))
    for i in range(-radius, radius + 1):
        for j in range(-radius, radius + 1):
            if np.sqrt(i * i + j * j) > radius:
                continue
            neighbour = padded[:, radius + i : radius + i + height, radius + j : radius + j + width]
            distance = np.abs(neighbour - image).sum(0, keepdims=True)
            weight = np.exp(-(i * i + j * j) / (2 * sigma_space**2)) * np.exp(-(distance**2) / (2 * sigma_color**2))
            numerator += weight * neighbour
            denominator += weight
    return numerator / denominator


def reference_sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL/kornia sharpness of one image (3, H, W)."""
    _, height, width = image.shape
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]]) / 13
    degenerate = image.copy()
    if height > 2 and width > 2:
        degenerate[:, 1:-1, 1:-1] = np.clip(correlate2d(image, kernel, height - 2, width - 2), 0, 1)
    return np.clip(degenerate + factor * (image - degenerate), 0, 1)


def reference_smart(image: np.ndarray, noise_radius: int, preserve_edges, strengths, ratios) -> np.ndarray:
    out = np.empty_like(image)
    for b in range(image.shape[0]):
        pe = preserve_edges[b]
        sigma_color = max(1 - pe, 0.05) if pe > 0 else 1.0
        blurred = reference_bilateral(image[b], noise_radius, sigma_color) if noise_radius > 1 else image[b]
        sharpened = reference_sharpness(image[b], strengths[b]) if strengths[b] > 0 else image[b]
        out[b] = np.clip(ratios[b] * sharpened + (1 - ratios[b]) * blurred, 0, 1)
    return out


def reference_cas(image: np.ndarray, amounts) -> np.ndarray:
    _, _, height, width = image.shape
    padded = np.pad(image, ((0, 0), (0, 0), (1, 1), (1, 1)))

    def at(dy, dx):
        return padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]

    a, b, c, d, e, f, g, h, i = (at(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    cross, corners = np.stack([b, d, e, f, h]), np.stack([a, c, g, i])
    low = np.maximum(cross.min(0), 0) + np.maximum(corners.min(0), 0)
    high = np.minimum(cross.max(0), 1) + np.minimum(corners.max(0), 1)
    amp = np.sqrt(np.minimum(low, 2 - high) / (high + 1e-5))
    amount = np.asarray(amounts, dtype=np.float64)[:, None, None, None]
    weight = -amp * (1 / 8 + amount * (1 / 5 - 1 / 8))
    return np.clip((weight * (b + d + f + h) + e) / (1 + 4 * weight), 0, 1)


def reference_solarize(image: np.ndarray, thresholds) -> np.ndarray:
    threshold = np.asarray(thresholds, dtype=np.float64)[:, None, None, None]
    return np.where(image > threshold, 1 - image, image)


def reference_grey(image: np.ndarray, method: str) -> np.ndarray:
    r, g, b = image[:, 0:1], image[:, 1:2], image[:, 2:3]
    if method == "luminance (Rec.709)":
        return 0.2126 * r + 0.7152 * g + 0.0722 * b
    if method == "luminance (Rec.601)":
        return 0.299 * r + 0.587 * g + 0.114 * b
    if method == "average":
        return image.mean(1, keepdims=True)
    return (image.max(1, keepdims=True) + image.min(1, keepdims=True)) / 2


def reference_desaturate(image: np.ndarray, factors, method: str) -> np.ndarray:
    factor = np.asarray(factors, dtype=np.float64)[:, None, None, None]
    return np.clip((1 - factor) * image + factor * reference_grey(image, method), 0, 1)
