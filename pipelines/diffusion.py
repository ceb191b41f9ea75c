"""What every diffusers endpoint shares: loading, speed-ups, seeds, progress, safety, output, provenance.

An endpoint subclasses `DiffusionPipeline`, names its diffusers class and weights.lock model, turns
a request into a `Generation` (`plan`, on the host) and runs it (`generate`, on the device); the base
does the rest:

- `setup` loads the model from its verified weights store folder with `from_pretrained` (bf16 on
  CUDA, fp32 on the CPU) and the safety checker beside it; the worker keeps both warm.
- Each image gets its own CPU `torch.Generator` seeded `seed + index`, so the same inputs, seed and
  weights give the same bytes on the same machine and the noise does not depend on the device.
- `progress_arguments` makes a diffusers call log `step i/n` into the request's status logs and stop
  at the next step once the request is cancelled.
- The safety checker (fal's default, a ViT NSFW classifier, Falconsai/nsfw_image_detection) sees the
  final 8-bit images; a flagged image is replaced by a black one of the same size and reported in
  `has_nsfw_concepts`, as fal does.
- Out of memory inside a call, the call's activations are released before the worker sees the error
  (the worker then evicts other pipelines and retries, or answers 413 `out_of_memory`).
- Results record their provenance: the weights' lock entry (repo, revision, digest), seed, library
  versions, dtype and the speed-ups in force, plus what the endpoint adds (scheduler, steps...).

Speed-ups. `PipelineSettings.speedups` (`kiln serve --speedups on|off`; off runs diffusers as it
ships) switches the lossless ones: fused QKV projections, the fastest exact attention backend available, and on
CUDA `torch.compile` of the denoiser, plus a cache of text embeddings (negative prompts and style
templates repeat). They keep the maths, so results differ from stock diffusers only in float
rounding, and they apply whatever quality level a request asks for. Every text is encoded alone, so
a cached embedding is bit-identical to a fresh one.
"""

from __future__ import annotations

import abc
import inspect
import logging
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from pydantic import BaseModel

from kernels.convert import quantize
from pipelines.contract import (
    Image,
    Pipeline,
    PipelineSettings,
    RequestContext,
    Weights,
    report_progress,
)

logger = logging.getLogger(__name__)

SAFETY_CHECKER = "nsfw-image-detection"
NSFW_THRESHOLD = 0.5  # fal's: an image is flagged when P(nsfw) > 0.5
# exact attention kernels, fastest first; the first one the machine has is used
CUDA_ATTENTION_BACKENDS = ("_flash_3", "flash", "_native_cudnn")
TEXT_EMBEDDING_CACHE_SIZE = 64
COMPILE_MODE = "max-autotune-no-cudagraphs"
SEED_RANGE = 2**32  # drawn seeds stay in 32 bits, as fal's are


@dataclass(frozen=True)
class Speedups:
    """The lossless speed-ups a pipeline applies in `setup` (see the module docstring)."""

    fuse_qkv: bool = False
    attention_backends: tuple[str, ...] = ()
    compile: bool = False
    cache_text_embeddings: bool = False

    @classmethod
    def for_device(cls, device: torch.device, enabled: bool) -> Speedups:
        """The speed-ups for `device`; none when the operator switched them off."""
        if not enabled:
            return cls()
        if device.type == "cuda":
            return cls(
                fuse_qkv=True, attention_backends=CUDA_ATTENTION_BACKENDS, compile=True, cache_text_embeddings=True
            )
        # compiling pays off only on a GPU; on the CPU it costs more time than it saves
        return cls(fuse_qkv=True, cache_text_embeddings=True)

    def apply(self, denoiser: torch.nn.Module) -> dict[str, Any]:
        """Applies the speed-ups to a diffusers transformer in place; returns what was applied."""
        applied: dict[str, Any] = {"fused_qkv": False, "attention_backend": "native", "compiled": False}
        if self.fuse_qkv and hasattr(denoiser, "fuse_qkv_projections"):
            denoiser.fuse_qkv_projections()
            applied["fused_qkv"] = True
        for backend in self.attention_backends:
            try:
                denoiser.set_attention_backend(backend)
            except (ImportError, RuntimeError, ValueError) as error:
                logger.info("attention backend %s is not available here: %s", backend, error)
                continue
            applied["attention_backend"] = backend
            break
        if self.compile:
            denoiser.compile(fullgraph=True, mode=COMPILE_MODE)
            applied["compiled"] = True
        return applied


class TextEmbeddingCache:
    """Least-recently-used text embeddings, keyed by the text and how it was encoded."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0

    def get(self, key: Hashable, encode: Callable[[], Any]) -> Any:
        if self._capacity and key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        value = encode()
        if self._capacity:
            self._entries[key] = value
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return value


class SafetyChecker:
    """fal's default NSFW check: a transformers image classifier whose `nsfw` label scores > 0.5."""

    def __init__(self, folder: Any, device: torch.device, dtype: torch.dtype) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.model = AutoModelForImageClassification.from_pretrained(
            folder, dtype=dtype, use_safetensors=True, local_files_only=True
        ).to(device)
        self.model.eval()
        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        self.nsfw_index = self.model.config.label2id["nsfw"]

    @torch.inference_mode()
    def flags(self, images: Sequence[np.ndarray]) -> list[bool]:
        """`(H, W, 3)` uint8 images on the host (where the image processor works) -> whether each is NSFW."""
        batch = self.processor(images=list(images), return_tensors="pt")
        pixel_values = batch["pixel_values"].to(self.model.device, self.model.dtype)
        probabilities = self.model(pixel_values=pixel_values).logits.float().softmax(dim=-1)
        return (probabilities[:, self.nsfw_index] > NSFW_THRESHOLD).tolist()


@dataclass(frozen=True, kw_only=True)
class Generation:
    """One request, planned on the host: what `generate` needs plus what every endpoint shares.
    Endpoints subclass it with their own fields."""

    seed: int
    num_images: int
    enable_safety_checker: bool
    output_format: str = "png"
    sync_mode: bool = False
    # what the endpoint adds to the result's provenance (scheduler, steps, sizes...)
    provenance: dict[str, Any] = field(default_factory=dict)


GenerationT = TypeVar("GenerationT", bound=Generation)


@dataclass(frozen=True)
class GeneratedImages(Generic[GenerationT]):
    generation: GenerationT
    pixels: list[np.ndarray]  # (H, W, 3) uint8 each
    has_nsfw_concepts: list[bool]
    # wall time of the diffusers call and the safety check: fal's `timings.inference`
    inference_seconds: float


def progress_arguments(pipe: Any, requests: Sequence[RequestContext], planned_steps: int) -> dict[str, Any]:
    """Keyword arguments for a diffusers pipeline call that log every step into the requests' status
    and stop the call at the next step once they are cancelled (`report_progress` raises)."""

    def report(step_index: int) -> None:
        # pipelines that trim the schedule (image-to-image `strength`) say how many steps they run
        total = getattr(pipe, "_num_timesteps", None) or planned_steps
        report_progress(requests, step_index + 1, total)

    if "callback_on_step_end" in inspect.signature(pipe.__call__).parameters:

        def on_step_end(pipe: Any, step_index: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            report(step_index)
            return tensors

        return {"callback_on_step_end": on_step_end}

    # PixArt pipelines still have only the legacy callback
    return {"callback": lambda step_index, timestep, latents: report(step_index), "callback_steps": 1}


@dataclass(eq=False)
class LoadedPipeline:
    """A diffusers pipeline on one device with its speed-ups applied. Endpoints that run the same
    model share it (the editing endpoints all run FLUX.1 Kontext [dev]): it stays loaded while one of
    them is warm and is freed once the worker has evicted them all."""

    pipe: Any
    applied_speedups: dict[str, Any]


_LOADED: weakref.WeakValueDictionary[Hashable, LoadedPipeline] = weakref.WeakValueDictionary()
_LOADING = threading.Lock()


def _load_shared(
    diffusers_class: str,
    model: str,
    device: torch.device,
    dtype: torch.dtype,
    speedups: Speedups,
    weights: Weights,
) -> LoadedPipeline:
    import diffusers

    # verified on every setup, so a store that changed refuses even while another endpoint holds the model
    folder = weights.verified_folder(model)
    key = (diffusers_class, str(folder), str(device), dtype, speedups)
    with _LOADING:
        loaded = _LOADED.get(key)
        if loaded is None:
            pipeline_class = getattr(diffusers, diffusers_class)
            pipe = pipeline_class.from_pretrained(folder, dtype=dtype, use_safetensors=True, local_files_only=True)
            pipe = pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
            loaded = LoadedPipeline(pipe, speedups.apply(pipe.transformer))
            _LOADED[key] = loaded
        return loaded


class DiffusionPipeline(Pipeline[BaseModel, GenerationT, GeneratedImages]):
    """The shared part of Kiln's diffusers endpoints; see the module docstring."""

    # the diffusers pipeline class, by name (diffusers is imported only when a worker sets up)
    diffusers_class: ClassVar[str]
    # the weights.lock model holding that pipeline's folder
    model: ClassVar[str]

    pipe: Any
    dtype: torch.dtype
    speedups: Speedups

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "model" in cls.__dict__:
            cls.models = (cls.model, SAFETY_CHECKER)

    @classmethod
    def prepare(cls, inputs: BaseModel) -> BaseModel:
        """Draws the seed at submit time, so a retried request makes the same images."""
        if getattr(inputs, "seed", None) is None:
            return inputs.model_copy(update={"seed": secrets.randbelow(SEED_RANGE)})
        return inputs

    # -- setup -------------------------------------------------------------------------------------

    def setup(self, device: torch.device, weights: Weights, settings: PipelineSettings) -> None:
        super().setup(device, weights, settings)
        self.dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        self.speedups = Speedups.for_device(device, settings.speedups)
        self.loaded = _load_shared(self.diffusers_class, self.model, device, self.dtype, self.speedups, weights)
        self.pipe, self.applied_speedups = self.loaded.pipe, self.loaded.applied_speedups
        self.safety_checker = SafetyChecker(weights.verified_folder(SAFETY_CHECKER), device, self.dtype)
        self.text_embeddings = TextEmbeddingCache(
            TEXT_EMBEDDING_CACHE_SIZE if self.speedups.cache_text_embeddings else 0
        )
        self.setup_provenance = {
            "weights": {name: weights.provenance(name) for name in self.models},
            "dtype": str(self.dtype).removeprefix("torch."),
            "speedups": self.applied_speedups,
            "generator": "cpu, one per image, seeded seed + image index",
            "libraries": {name: version(name) for name in ("diffusers", "transformers")},
        }
        logger.info("%s loaded on %s (%s, speed-ups %s)", self.model, device, self.dtype, self.applied_speedups)

    # -- what an endpoint implements -------------------------------------------------------------

    @abc.abstractmethod
    def plan(self, inputs: BaseModel, request: RequestContext) -> GenerationT:
        """Turns validated inputs into a Generation (fetching images, applying templates)."""

    @abc.abstractmethod
    def generate(
        self, generation: GenerationT, generators: list[torch.Generator], requests: Sequence[RequestContext]
    ) -> torch.Tensor:
        """Runs the diffusers pipeline; returns `(num_images, 3, H, W)` floats in [0, 1]."""

    @abc.abstractmethod
    def output(self, result: GeneratedImages[GenerationT], images: list[Image], request: RequestContext) -> BaseModel:
        """The endpoint's output model, given the stored images."""

    # -- the stages the worker drives ------------------------------------------------------------

    def decode(self, inputs: BaseModel, request: RequestContext) -> GenerationT:
        generation = self.plan(inputs, request)
        request.add_provenance({**self.setup_provenance, "seed": generation.seed, **generation.provenance})
        return generation

    def predict(
        self, items: Sequence[GenerationT], requests: Sequence[RequestContext]
    ) -> list[GeneratedImages[GenerationT]]:
        return [self._run(generation, request) for generation, request in zip(items, requests)]

    def encode(self, prediction: GeneratedImages[GenerationT], inputs: BaseModel, request: RequestContext) -> BaseModel:
        generation = prediction.generation
        images = [
            request.image_output(pixels, image_format=generation.output_format, sync_mode=generation.sync_mode)
            for pixels in prediction.pixels
        ]
        return self.output(prediction, images, request)

    # -- shared helpers --------------------------------------------------------------------------

    def cached_text_embedding(self, key: Hashable, encode: Callable[[], Any]) -> Any:
        return self.text_embeddings.get(key, encode)

    def _run(self, generation: GenerationT, request: RequestContext) -> GeneratedImages[GenerationT]:
        generators = [torch.Generator("cpu").manual_seed(generation.seed + i) for i in range(generation.num_images)]
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                images = self.generate(generation, generators, [request])
                return self._checked(generation, quantize(images), start)
        except torch.OutOfMemoryError as error:
            message = str(error)
        # here the failed call's frames, which hold its activations, are gone and can be freed
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        raise torch.OutOfMemoryError(message)

    def _checked(self, generation: GenerationT, pixels: torch.Tensor, start: float) -> GeneratedImages[GenerationT]:
        """Black for every image the safety checker flags, when the request enables it."""
        images = pixels.permute(0, 2, 3, 1).cpu().numpy()
        flags = self.safety_checker.flags(images) if generation.enable_safety_checker else [False] * len(images)
        images[flags] = 0
        return GeneratedImages(generation, list(images), flags, time.perf_counter() - start)
