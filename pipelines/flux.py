"""What the FLUX.1 endpoints share: fal's common input fields, output sizes, input images, prompts.

Sizes. FLUX works on 16-pixel units (the VAE's 8x downsampling, then 2x2 patches), so an output
keeps the input's aspect ratio with both sides rounded to multiples of 16, and is scaled down (never
up) to at most the model's working area. Inputs with alpha are edited as RGB (the alpha plane is
dropped); they are resized to the working size with antialiased bicubic filtering.

Prompts go through both FLUX text encoders (CLIP for the pooled vector, T5 padded to 512 tokens, as
diffusers does) once per distinct prompt; the embeddings are cached like every diffusion endpoint's.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from pydantic import BeforeValidator, Field

from pipelines.contract import RawImage
from pipelines.diffusion import DiffusionPipeline, Generation

SIZE_MULTIPLE = 16
MAX_SEQUENCE_LENGTH = 512  # T5 tokens, diffusers' and BFL's default for FLUX.1 [dev]

OutputFormat = Literal["jpeg", "png"]
AspectRatio = Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]


def _tolerance_as_text(value: Any) -> Any:
    # fal's enum values are strings; clients also send the level as a number
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


SafetyTolerance = Annotated[Literal["1", "2", "3", "4", "5", "6"], BeforeValidator(_tolerance_as_text)]

SEED_DESCRIPTION = (
    "The same seed and the same prompt given to the same version of the model will output the same image every time."
)
SYNC_MODE_DESCRIPTION = (
    "If set to true, the function will wait for the image to be generated and uploaded before returning the "
    "response. This will increase the latency of the function but it allows you to get the image directly in the "
    "response without going through the CDN."
)
GUIDANCE_DESCRIPTION = (
    "The CFG (Classifier Free Guidance) scale is a measure of how close you want the model to stick to your prompt "
    "when looking for a related image to show you."
)
OUTPUT_SEED_DESCRIPTION = (
    "Seed of the generated Image. It will be the same value of the one passed in the input or the randomly "
    "generated that was used in case none was passed."
)
SAFETY_TOLERANCE_DESCRIPTION = (
    "The safety tolerance level for the generated image. 1 being the most strict and 6 being the most permissive. "
    "Kiln: accepted and ignored (reported in the provenance); the safety checker always runs."
)

Seed = Annotated[int | None, Field(ge=0, le=2**63 - 1, description=SEED_DESCRIPTION)]
SyncMode = Annotated[bool, Field(description=SYNC_MODE_DESCRIPTION)]


def aspect_value(aspect_ratio: str) -> float:
    """`"16:9"` -> 16/9."""
    width, height = aspect_ratio.split(":")
    return int(width) / int(height)


def output_size(width: int, height: int, *, max_area: int, aspect_ratio: str | None = None) -> tuple[int, int]:
    """The size to generate for a `width` x `height` input: its area (at most `max_area`), its aspect
    ratio unless `aspect_ratio` asks for another, both sides rounded to multiples of 16.

    >>> output_size(1000, 600, max_area=1024**2)
    (1008, 608)
    >>> output_size(4000, 3000, max_area=1024**2)
    (1184, 880)
    >>> output_size(1024, 1024, max_area=1024**2, aspect_ratio="16:9")
    (1360, 768)
    """
    area = min(width * height, max_area)
    aspect = aspect_value(aspect_ratio) if aspect_ratio else width / height
    exact_width, exact_height = math.sqrt(area * aspect), math.sqrt(area / aspect)
    return round_to_multiple(exact_width), round_to_multiple(exact_height)


def round_to_multiple(side: float) -> int:
    """The nearest multiple of 16 (halves up), at least 16."""
    return max(SIZE_MULTIPLE, math.floor(side / SIZE_MULTIPLE + 0.5) * SIZE_MULTIPLE)


def resized_rgb(image: RawImage, width: int, height: int) -> torch.Tensor:
    """`(1, 3, height, width)` float32 in [0, 1] on the CPU: the image's RGB, antialiased bicubic resize.

    An aspect ratio change stretches; callers that keep the aspect pass a size of the same aspect.
    """
    rgb = image.to_float("cpu")[:3].unsqueeze(0)
    if (image.width, image.height) == (width, height):
        return rgb
    return F.interpolate(rgb, size=(height, width), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


GenerationT = TypeVar("GenerationT", bound=Generation)


class FluxDiffusionPipeline(DiffusionPipeline[GenerationT]):
    """A FLUX.1 endpoint: `DiffusionPipeline` plus cached prompt embeddings for FLUX's two encoders."""

    def prompt_embeddings(self, prompt: str, num_images: int) -> dict[str, torch.Tensor]:
        """`prompt_embeds` and `pooled_prompt_embeds` for a diffusers FLUX call making `num_images` images,
        one row per image already, so the call keeps `num_images_per_prompt` at 1."""

        def encode() -> tuple[torch.Tensor, torch.Tensor]:
            embeds, pooled, _ = self.pipe.encode_prompt(
                prompt=prompt, prompt_2=None, device=self.device, max_sequence_length=MAX_SEQUENCE_LENGTH
            )
            return embeds, pooled

        embeds, pooled = self.cached_text_embedding(("flux", prompt), encode)
        return {
            "prompt_embeds": embeds.expand(num_images, -1, -1),
            "pooled_prompt_embeds": pooled.expand(num_images, -1),
        }
