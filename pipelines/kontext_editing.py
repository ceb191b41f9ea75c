"""Prompt-driven editing on FLUX.1 Kontext [dev] (diffusers' `FluxKontextPipeline`), shared by the
editing endpoints: fal-ai/image-editing/*, flux-pro/kontext/max/multi, step1x-edit, seededit,
luma-photon/modify and recraft/v3/image-to-image. `docs/editing-endpoints.md` says, per endpoint,
what fal runs, what Kiln runs instead and what differs.

An endpoint module holds only its schema and `spec`: how its inputs become an `EditSpec` (the
instruction Kontext receives, the reference images, guidance, steps, what is ignored). The rest is
here:

- **Sizes.** The output has the first image's area (at most 1 megapixel, Kontext's working size)
  and aspect ratio, or the requested `aspect_ratio`, sides rounded to multiples of 16.
- **References.** Each reference image is encoded by the VAE on its own; the latents are laid side
  by side and joined into one sequence after the image being generated, so the transformer sees
  them as Kontext sees its one reference (position ids with first coordinate 1), at different
  column offsets. All references share one height chosen so that together they have the output's
  pixel count: one reference is encoded at the output's size, as in stock Kontext, and more
  references cost no more tokens. Kontext was trained with one reference; several work in
  practice but are outside what it was trained for.
- **Strength.** Endpoints with a `strength` start from the first reference (scaled to cover the
  output and centre-cropped) noised to that level and run that share of the steps, as
  image-to-image does; the others start from noise, as Kontext does.
- `guidance_scale` drives Kontext's distilled guidance embedding: one transformer pass per step,
  no negative prompt.
- Parameters Kontext cannot honour (fal's `safety_tolerance`, recraft's `style_id`, negative
  prompts) are accepted and listed under `ignored` in the result's provenance whenever they hold a
  value (`safety_tolerance` always does: fal gives it a default).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel

from pipelines.contract import RawImage, RequestContext
from pipelines.diffusion import WARM_UP_STEPS, Generation, progress_arguments
from pipelines.flux import (
    FluxDiffusionPipeline,
    output_size,
    resized_rgb,
    round_to_multiple,
)

MAX_AREA = 1024 * 1024
KONTEXT_STEPS = 28  # diffusers' and BFL's default for Kontext [dev]
KONTEXT_GUIDANCE = 2.5  # BFL's default for Kontext [dev]


# (input field, URL) pairs; the field is a name, or a path such as ("image_urls", 0)
ImageUrls = tuple[tuple[str | tuple[str | int, ...], str], ...]


@dataclass(frozen=True)
class EditSpec:
    """What one request asks of Kontext, before its images are fetched."""

    instruction: str
    # each reference image, the first one setting the output's size
    image_urls: ImageUrls
    seed: int
    guidance_scale: float = KONTEXT_GUIDANCE
    num_inference_steps: int = KONTEXT_STEPS
    num_images: int = 1
    aspect_ratio: str | None = None
    # share of the schedule to run from the first reference noised to that level; None: from noise
    denoise: float | None = None
    output_format: str = "png"
    sync_mode: bool = False
    enable_safety_checker: bool = True
    # fal parameters that were set but Kontext cannot honour: name -> value
    ignored: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Edit(Generation):
    instruction: str
    references: tuple[RawImage, ...]
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    denoise: float | None


def denoising_steps(num_inference_steps: int, denoise: float | None) -> int:
    return num_inference_steps if denoise is None else max(1, round(num_inference_steps * denoise))


def reference_sizes(references: Sequence[RawImage], area: int) -> list[tuple[int, int]]:
    """One shared height and each reference's own aspect ratio, `area` pixels in all, multiples of 16."""
    aspects = [image.width / image.height for image in references]
    height = round_to_multiple(math.sqrt(area / sum(aspects)))
    return [(round_to_multiple(height * aspect), height) for aspect in aspects]


def cover_crop(image: RawImage, width: int, height: int) -> torch.Tensor:
    """`(1, 3, height, width)` in [0, 1]: the image scaled to cover the size, centre-cropped."""
    scale = max(width / image.width, height / image.height)
    cover_width, cover_height = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    covered = resized_rgb(image, cover_width, cover_height)
    top, left = (cover_height - height) // 2, (cover_width - width) // 2
    return covered[:, :, top : top + height, left : left + width]


class KontextEditPipeline(FluxDiffusionPipeline[Edit]):
    """An editing endpoint on FLUX.1 Kontext [dev]; subclasses give the schema, `spec` and `output`."""

    diffusers_class: ClassVar[str] = "FluxKontextPipeline"
    model: ClassVar[str] = "flux-1-kontext-dev"
    # the output and its references, as many tokens again
    plan_images: ClassVar[int] = 4
    plan_image_sequences: ClassVar[int] = 2

    def warm_up_generation(self, width: int, height: int) -> Edit:
        reference = RawImage(torch.zeros(3, height, width, dtype=torch.uint8), 255)
        return Edit(
            seed=0,
            num_images=1,
            enable_safety_checker=False,
            instruction="",
            references=(reference,),
            width=width,
            height=height,
            num_inference_steps=WARM_UP_STEPS,
            guidance_scale=KONTEXT_GUIDANCE,
            denoise=None,
        )

    @abc.abstractmethod
    def spec(self, inputs: BaseModel) -> EditSpec:
        """The endpoint's inputs as an edit: instruction, images, settings, what is ignored."""

    def plan(self, inputs: BaseModel, request: RequestContext) -> Edit:
        spec = self.spec(inputs)
        references = tuple(request.fetch_image(url, field) for field, url in spec.image_urls)
        first = references[0]
        width, height = output_size(first.width, first.height, max_area=MAX_AREA, aspect_ratio=spec.aspect_ratio)
        return Edit(
            seed=spec.seed,
            num_images=spec.num_images,
            enable_safety_checker=spec.enable_safety_checker,
            output_format=spec.output_format,
            sync_mode=spec.sync_mode,
            instruction=spec.instruction,
            references=references,
            width=width,
            height=height,
            num_inference_steps=spec.num_inference_steps,
            guidance_scale=spec.guidance_scale,
            denoise=spec.denoise,
            provenance={
                "model_note": "FLUX.1 Kontext [dev] stands in for the model fal runs on this endpoint",
                "instruction": spec.instruction,
                "scheduler": {"class": "FlowMatchEulerDiscreteScheduler", **self.pipe.scheduler.config},
                "num_inference_steps": spec.num_inference_steps,
                "denoising_steps": denoising_steps(spec.num_inference_steps, spec.denoise),
                "start": "noise" if spec.denoise is None else f"first image noised to {spec.denoise:g}",
                "guidance_scale": spec.guidance_scale,
                "size": {"width": width, "height": height},
                "references": [{"width": w, "height": h} for w, h in reference_sizes(references, width * height)],
                "ignored": spec.ignored,
            },
        )

    def generate(
        self, edit: Edit, generators: list[torch.Generator], requests: Sequence[RequestContext]
    ) -> torch.Tensor:
        steps = denoising_steps(edit.num_inference_steps, edit.denoise)
        sigmas = np.linspace(1.0, 1 / edit.num_inference_steps, edit.num_inference_steps)[-steps:]
        latents = None if edit.denoise is None else self._noised_start(edit, sigmas, generators)
        result = self.pipe(
            image=self._reference_latents(edit),
            width=edit.width,
            height=edit.height,
            max_area=edit.width * edit.height,
            num_inference_steps=steps,
            sigmas=sigmas,
            latents=latents,
            guidance_scale=edit.guidance_scale,
            generator=generators,
            output_type="pt",
            **self.prompt_embeddings(edit.instruction, edit.num_images),
            **progress_arguments(self.pipe, requests, steps),
        )
        return result.images

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """`(1, 3, H, W)` in [0, 1] -> the VAE's shifted, scaled latents `(1, C, H/8, W/8)`."""
        pixels = (pixels * 2 - 1).to(self.device, self.dtype)
        # the mode of the latent distribution, as Kontext encodes its reference: no randomness
        return self.pipe._encode_vae_image(pixels, generator=None)

    def _reference_latents(self, edit: Edit) -> torch.Tensor:
        """Every reference encoded alone at its share of the output's area, laid side by side."""
        sizes = reference_sizes(edit.references, edit.width * edit.height)
        return torch.cat(
            [self._encode(resized_rgb(image, w, h)) for image, (w, h) in zip(edit.references, sizes)], dim=3
        )

    def _noised_start(self, edit: Edit, sigmas: np.ndarray, generators: list[torch.Generator]) -> torch.Tensor:
        """Packed latents of the first reference noised to the first of `sigmas` (after FLUX's
        resolution-dependent shift). The noise is drawn as the pipeline draws its own, so a start
        at sigma 1 is exactly the pipeline's start from noise."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift
        from diffusers.utils.torch_utils import randn_tensor

        latents = self._encode(cover_crop(edit.references[0], edit.width, edit.height))
        _, channels, latent_height, latent_width = latents.shape
        count = len(generators)
        noise = randn_tensor(
            (count, channels, latent_height, latent_width),
            generator=generators,
            device=self.device,
            dtype=latents.dtype,
        )
        pack = self.pipe._pack_latents
        packed_noise = pack(noise, count, channels, latent_height, latent_width)
        packed = pack(latents.expand(count, -1, -1, -1), count, channels, latent_height, latent_width)
        config = self.pipe.scheduler.config
        mu = calculate_shift(
            packed.shape[1], config.base_image_seq_len, config.max_image_seq_len, config.base_shift, config.max_shift
        )
        self.pipe.scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=self.device)
        start = self.pipe.scheduler.timesteps[:1].expand(count)
        return self.pipe.scheduler.scale_noise(packed, start, packed_noise)


def ignored_fields(inputs: BaseModel, names: Sequence[str]) -> dict[str, Any]:
    """The named fields that hold a value (not None or empty), for `EditSpec.ignored`."""
    return {name: getattr(inputs, name) for name in names if getattr(inputs, name) not in (None, "", [])}


def kontext_pro_spec(inputs: BaseModel, *, instruction: str, image_urls: ImageUrls, **settings: Any) -> EditSpec:
    """The spec of an endpoint with the settings fal's image-editing and FLUX.1 Kontext [pro] schemas
    share (`seed`, `guidance_scale`, `aspect_ratio`, `output_format`, `sync_mode`, and
    `safety_tolerance`, which is ignored), plus the endpoint's own `settings`."""
    return EditSpec(
        instruction=instruction,
        image_urls=image_urls,
        seed=inputs.seed,
        guidance_scale=inputs.guidance_scale,
        aspect_ratio=inputs.aspect_ratio,
        output_format=inputs.output_format,
        sync_mode=inputs.sync_mode,
        ignored=ignored_fields(inputs, ["safety_tolerance"]),
        **settings,
    )
