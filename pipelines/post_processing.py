"""fal-ai/post-processing: thirteen image effects as one batched chain of tensor ops on the device.

Enabled effects always apply in one fixed order, the order of fal's schema (`EFFECTS` below):
grain, color correction, chromatic aberration, blur, vignette, parabolize, tint, dissolve, dodge &
burn, glow, sharpen, solarize, desaturate. Each effect clamps its own output to [0, 1]. Alpha is
carried through untouched; grayscale, palette and 16-bit inputs are converted on decode. The result
is an 8-bit PNG (rounded to nearest), RGBA when the input had alpha.

Requests waiting together with the same image size run as one batch: every effect is applied once
per group of requests that share its structural parameters (radius, mode), with the continuous
parameters passed per sample, so a batched request gives the same bytes as the request alone.

Kiln additions to fal's schema: `seed` (film grain is random; a missing seed is drawn at submit
and reported in the result's provenance) and `sync_mode` (return the image as a data URI).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field

from kernels.blur import gaussian_blur, kuwahara_blur
from kernels.chromatic import shift_channels
from kernels.color import correct_color
from kernels.convert import quantize
from kernels.desaturate import DESATURATE_METHODS, desaturate
from kernels.dissolve import dissolve, resize_to
from kernels.dodge_burn import DODGE_BURN_MODES, dodge_burn
from kernels.glow import glow
from kernels.grain import GRAIN_STYLES, add_film_grain
from kernels.parabolize import parabolize
from kernels.sharpen import sharpen_basic, sharpen_cas, sharpen_smart
from kernels.solarize import solarize
from kernels.tint import TINT_MODES, tint
from kernels.vignette import apply_vignette
from pipelines.contract import FieldError, Image, Pipeline, RawImage, RequestContext

Direction = Literal["horizontal", "vertical"]
SharpenMode = Literal["basic", "smart", "cas"]


class SharpenFields(BaseModel):
    """The sharpen parameters, shared with fal-ai/post-processing/sharpen."""

    sharpen_mode: SharpenMode = Field("basic", description="Type of sharpening to apply")
    sharpen_radius: int = Field(1, ge=1, le=15, description="Sharpen radius (for basic mode)")
    sharpen_alpha: float = Field(1.0, ge=0.1, le=5.0, description="Sharpen strength (for basic mode)")
    noise_radius: int = Field(7, ge=1, le=25, description="Noise radius for smart sharpen")
    preserve_edges: float = Field(0.75, ge=0.0, le=1.0, description="Edge preservation factor")
    smart_sharpen_strength: float = Field(5.0, ge=0.0, le=25.0, description="Smart sharpen strength")
    smart_sharpen_ratio: float = Field(0.5, ge=0.0, le=1.0, description="Smart sharpen blend ratio")
    cas_amount: float = Field(0.8, ge=0.0, le=1.0, description="CAS sharpening amount")


class KilnImageFields(BaseModel):
    """Fields Kiln adds to fal's post-processing schemas."""

    sync_mode: bool = Field(False, description="Kiln extension: return the image as a data URI instead of a URL")


class PostProcessingInput(SharpenFields, KilnImageFields):
    image_url: str = Field(description="URL of image to process")
    enable_grain: bool = Field(False, description="Enable film grain effect")
    grain_intensity: float = Field(0.4, ge=0.0, le=1.0, description="Film grain intensity (when enabled)")
    grain_scale: float = Field(10.0, ge=1.0, le=100.0, description="Film grain scale (when enabled)")
    grain_style: Literal[GRAIN_STYLES] = Field("modern", description="Style of film grain to apply")
    enable_color_correction: bool = Field(False, description="Enable color correction")
    temperature: float = Field(0.0, ge=-100.0, le=100.0, description="Color temperature adjustment")
    brightness: float = Field(0.0, ge=-100.0, le=100.0, description="Brightness adjustment")
    contrast: float = Field(0.0, ge=-100.0, le=100.0, description="Contrast adjustment")
    saturation: float = Field(0.0, ge=-100.0, le=100.0, description="Saturation adjustment")
    gamma: float = Field(1.0, ge=0.2, le=2.2, description="Gamma adjustment")
    enable_chromatic: bool = Field(False, description="Enable chromatic aberration")
    red_shift: int = Field(0, ge=-20, le=20, description="Red channel shift amount")
    red_direction: Direction = Field("horizontal", description="Red channel shift direction")
    green_shift: int = Field(0, ge=-20, le=20, description="Green channel shift amount")
    green_direction: Direction = Field("horizontal", description="Green channel shift direction")
    blue_shift: int = Field(0, ge=-20, le=20, description="Blue channel shift amount")
    blue_direction: Direction = Field("horizontal", description="Blue channel shift direction")
    enable_blur: bool = Field(False, description="Enable blur effect")
    blur_type: Literal["gaussian", "kuwahara"] = Field("gaussian", description="Type of blur to apply")
    blur_radius: int = Field(3, ge=0, le=31, description="Blur radius")
    blur_sigma: float = Field(1.0, ge=0.1, le=10.0, description="Sigma for Gaussian blur")
    enable_vignette: bool = Field(False, description="Enable vignette effect")
    vignette_strength: float = Field(0.5, ge=0.0, le=10.0, description="Vignette strength (when enabled)")
    enable_parabolize: bool = Field(False, description="Enable parabolize effect")
    parabolize_coeff: float = Field(1.0, ge=-10.0, le=10.0, description="Parabolize coefficient")
    vertex_x: float = Field(0.5, ge=0.0, le=1.0, description="Vertex X position")
    vertex_y: float = Field(0.5, ge=0.0, le=1.0, description="Vertex Y position")
    enable_tint: bool = Field(False, description="Enable color tint effect")
    tint_strength: float = Field(1.0, ge=0.1, le=1.0, description="Tint strength")
    tint_mode: Literal[TINT_MODES] = Field("sepia", description="Tint color mode")
    enable_dissolve: bool = Field(False, description="Enable dissolve effect")
    dissolve_image_url: str = Field("", description="URL of second image for dissolve")
    dissolve_factor: float = Field(0.5, ge=0.0, le=1.0, description="Dissolve blend factor")
    enable_dodge_burn: bool = Field(False, description="Enable dodge and burn effect")
    dodge_burn_intensity: float = Field(0.5, ge=0.0, le=1.0, description="Dodge and burn intensity")
    dodge_burn_mode: Literal[DODGE_BURN_MODES] = Field("dodge", description="Dodge and burn mode")
    enable_glow: bool = Field(False, description="Enable glow effect")
    glow_intensity: float = Field(1.0, ge=0.0, le=5.0, description="Glow intensity")
    glow_radius: int = Field(5, ge=1, le=50, description="Glow blur radius")
    enable_sharpen: bool = Field(False, description="Enable sharpen effect")
    enable_solarize: bool = Field(False, description="Enable solarize effect")
    solarize_threshold: float = Field(0.5, ge=0.0, le=1.0, description="Solarize threshold")
    enable_desaturate: bool = Field(False, description="Enable desaturation effect")
    desaturate_factor: float = Field(1.0, ge=0.0, le=1.0, description="Desaturation factor")
    desaturate_method: Literal[DESATURATE_METHODS] = Field("luminance (Rec.709)", description="Desaturation method")
    seed: int | None = Field(
        None, ge=0, le=2**63 - 1, description="Kiln extension: seed of the film grain; drawn at random if omitted"
    )


class PostProcessingOutput(BaseModel):
    images: list[Image] = Field(description="The processed images")


@dataclass(frozen=True)
class Item:
    inputs: BaseModel
    image: RawImage
    dissolve_image: RawImage | None = None


@dataclass(frozen=True)
class Effect:
    """One step of the chain.

    `group` returns the parameters that must be equal within one kernel call (radii, modes);
    `apply` runs the kernel on `(B, 3, H, W)` images with the other parameters per sample.
    """

    name: str
    enabled: Callable[[BaseModel], bool]
    group: Callable[[BaseModel], Hashable]
    apply: Callable[[torch.Tensor, Sequence[Item]], torch.Tensor]


def flag(field: str) -> Callable[[BaseModel], bool]:
    return lambda inputs: getattr(inputs, field)


def per_sample(items: Sequence[Item], field: str, like: torch.Tensor) -> torch.Tensor:
    """One value of `field` per item, as a `(B,)` tensor on the images' device and dtype."""
    return torch.tensor([getattr(item.inputs, field) for item in items], dtype=like.dtype, device=like.device)


def ungrouped(inputs: BaseModel) -> Hashable:
    return ()


def _grain(images: torch.Tensor, items: Sequence[Item]) -> torch.Tensor:
    first = items[0].inputs
    return add_film_grain(
        images,
        per_sample(items, "grain_intensity", images),
        per_sample(items, "grain_scale", images),
        first.grain_style,
        [item.inputs.seed for item in items],
    )


def _color(images: torch.Tensor, items: Sequence[Item]) -> torch.Tensor:
    fields = ("temperature", "brightness", "contrast", "saturation", "gamma")
    return correct_color(images, *(per_sample(items, field, images) for field in fields))


def _chromatic(images: torch.Tensor, items: Sequence[Item]) -> torch.Tensor:
    i = items[0].inputs
    return shift_channels(
        images, i.red_shift, i.red_direction, i.green_shift, i.green_direction, i.blue_shift, i.blue_direction
    )


def _blur(images: torch.Tensor, items: Sequence[Item]) -> torch.Tensor:
    first = items[0].inputs
    if first.blur_type == "kuwahara":
        return kuwahara_blur(images, first.blur_radius)
    return gaussian_blur(images, first.blur_radius, per_sample(items, "blur_sigma", images))


def _dissolve(images: torch.Tensor, items: Sequence[Item]) -> torch.Tensor:
    height, width = images.shape[-2:]
    others = torch.cat(
        [
            resize_to(item.dissolve_image.to_float(images.device, images.dtype)[:3].unsqueeze(0), (height, width))
            for item in items
        ]
    )
    return dissolve(images, others, per_sample(items, "dissolve_factor", images))


def _sharpen(images: torch.Tensor, items: Sequence[Item]) -> torch.Tensor:
    first = items[0].inputs
    if first.sharpen_mode == "smart":
        return sharpen_smart(
            images,
            first.noise_radius,
            per_sample(items, "preserve_edges", images),
            per_sample(items, "smart_sharpen_strength", images),
            per_sample(items, "smart_sharpen_ratio", images),
        )
    if first.sharpen_mode == "cas":
        return sharpen_cas(images, per_sample(items, "cas_amount", images))
    return sharpen_basic(images, first.sharpen_radius, per_sample(items, "sharpen_alpha", images))


def sharpen_group(inputs: BaseModel) -> Hashable:
    return inputs.sharpen_mode, inputs.sharpen_radius, inputs.noise_radius


SHARPEN = Effect("sharpen", flag("enable_sharpen"), sharpen_group, _sharpen)

EFFECTS: tuple[Effect, ...] = (
    Effect("grain", flag("enable_grain"), lambda i: i.grain_style, _grain),
    Effect("color_correction", flag("enable_color_correction"), ungrouped, _color),
    Effect(
        "chromatic",
        flag("enable_chromatic"),
        lambda i: (i.red_shift, i.red_direction, i.green_shift, i.green_direction, i.blue_shift, i.blue_direction),
        _chromatic,
    ),
    Effect("blur", flag("enable_blur"), lambda i: (i.blur_type, i.blur_radius), _blur),
    Effect(
        "vignette",
        flag("enable_vignette"),
        ungrouped,
        lambda images, items: apply_vignette(images, per_sample(items, "vignette_strength", images)),
    ),
    Effect(
        "parabolize",
        flag("enable_parabolize"),
        ungrouped,
        lambda images, items: parabolize(
            images,
            per_sample(items, "parabolize_coeff", images),
            per_sample(items, "vertex_x", images),
            per_sample(items, "vertex_y", images),
        ),
    ),
    Effect(
        "tint",
        flag("enable_tint"),
        lambda i: i.tint_mode,
        lambda images, items: tint(images, per_sample(items, "tint_strength", images), items[0].inputs.tint_mode),
    ),
    Effect("dissolve", flag("enable_dissolve"), ungrouped, _dissolve),
    Effect(
        "dodge_burn",
        flag("enable_dodge_burn"),
        lambda i: i.dodge_burn_mode,
        lambda images, items: dodge_burn(
            images, per_sample(items, "dodge_burn_intensity", images), items[0].inputs.dodge_burn_mode
        ),
    ),
    Effect(
        "glow",
        flag("enable_glow"),
        lambda i: i.glow_radius,
        lambda images, items: glow(images, per_sample(items, "glow_intensity", images), items[0].inputs.glow_radius),
    ),
    SHARPEN,
    Effect(
        "solarize",
        flag("enable_solarize"),
        ungrouped,
        lambda images, items: solarize(images, per_sample(items, "solarize_threshold", images)),
    ),
    Effect(
        "desaturate",
        flag("enable_desaturate"),
        lambda i: i.desaturate_method,
        lambda images, items: desaturate(
            images, per_sample(items, "desaturate_factor", images), items[0].inputs.desaturate_method
        ),
    ),
)


def apply_effects(images: torch.Tensor, items: Sequence[Item], effects: Sequence[Effect]) -> torch.Tensor:
    """Runs the chain on `(B, C, H, W)` images in [0, 1]; channels past the third (alpha) pass through."""
    rgb, alpha = images[:, :3], images[:, 3:]
    for effect in effects:
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            if effect.enabled(item.inputs):
                groups[effect.group(item.inputs)].append(index)
        for indices in groups.values():
            if len(indices) == len(items):
                rgb = effect.apply(rgb, items)
            else:
                selected = torch.tensor(indices, device=rgb.device)
                processed = effect.apply(rgb.index_select(0, selected), [items[i] for i in indices])
                rgb = rgb.index_copy(0, selected, processed)
    return torch.cat([rgb, alpha], dim=1)


# Measured with one CPU thread, all effects: a batch of eight 64x64 images runs 6x faster per image than
# one at a time, 128x128 breaks even, and from 256x256 up a batch is slower than running alone (its large
# temporaries are page-faulted in afresh), so on the CPU a batch holds at most this many pixels.
CPU_BATCH_PIXELS = 2 * 128 * 128


class EffectsPipeline(Pipeline[BaseModel, Item, np.ndarray]):
    """Shared by the post-processing endpoints: decode, batch by size, run `effects`, encode PNG."""

    max_batch_size: ClassVar[int] = 16
    bytes_per_input_pixel: ClassVar[int] = 160  # measured peak 100-156 B/px, all effects, 1-9 Mpx, CPU
    effects: ClassVar[tuple[Effect, ...]]

    def decode(self, inputs: BaseModel, request: RequestContext) -> Item:
        image = request.fetch_image(inputs.image_url, "image_url")
        dissolve_image = None
        if getattr(inputs, "enable_dissolve", False):
            dissolve_image = request.fetch_image(inputs.dissolve_image_url, "dissolve_image_url")
        request.add_provenance(self.provenance(inputs))
        return Item(inputs, image, dissolve_image)

    def provenance(self, inputs: BaseModel) -> dict[str, object]:
        return {"effects": [effect.name for effect in self.effects if effect.enabled(inputs)]}

    def batch_key(self, item: Item) -> Hashable:
        return item.image.pixels.shape

    def batch_limit(self, item: Item) -> int:
        if self.device.type != "cpu":
            return self.max_batch_size
        return max(1, CPU_BATCH_PIXELS // (item.image.height * item.image.width))

    def predict(self, items: Sequence[Item], requests: Sequence[RequestContext]) -> list[np.ndarray]:
        images = torch.stack([item.image.to_float(self.device) for item in items])
        pixels = quantize(apply_effects(images, items, self.effects)).permute(0, 2, 3, 1).cpu().numpy()
        return list(pixels)

    def encode(self, prediction: np.ndarray, inputs: BaseModel, request: RequestContext) -> BaseModel:
        return self.Output(images=[request.image_output(prediction, sync_mode=inputs.sync_mode)])


class PostProcessingPipeline(EffectsPipeline):
    endpoint_id = "fal-ai/post-processing"
    Input = PostProcessingInput
    Output = PostProcessingOutput
    effects = EFFECTS

    @classmethod
    def prepare(cls, inputs: PostProcessingInput) -> PostProcessingInput:
        if inputs.enable_dissolve and not inputs.dissolve_image_url:
            raise FieldError("dissolve_image_url", "is required when `enable_dissolve` is true")
        if inputs.enable_grain and inputs.seed is None:
            return inputs.model_copy(update={"seed": secrets.randbelow(2**63)})
        return inputs

    def provenance(self, inputs: PostProcessingInput) -> dict[str, object]:
        return {**super().provenance(inputs), "seed": inputs.seed}
