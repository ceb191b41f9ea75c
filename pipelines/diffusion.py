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
import json
import logging
import math
import secrets
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from pydantic import BaseModel

from kernels.convert import quantize
from pipelines.contract import (
    GIB,
    Image,
    KilnError,
    MemoryPlan,
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
# one compiled graph for every image size and batch (sequence length and batch are symbolic), so a new
# size does not stall a worker for minutes; `warm_up` compiles it before /health says ready
COMPILE_DYNAMIC = True
WARM_UP_STEPS = 2
SEED_RANGE = 2**32  # drawn seeds stay in 32 bits, as fal's are


@dataclass(frozen=True)
class Speedups:
    """The lossless speed-ups a pipeline applies in `setup` (see the module docstring)."""

    fuse_qkv: bool = False
    attention_backends: tuple[str, ...] = ()
    compile: bool = False
    cache_text_embeddings: bool = False
    # compile each repeated block instead of the whole model (for a model that may carry cache hooks)
    compile_regions: bool = False

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
            drop_unfused_projections(denoiser)
            applied["fused_qkv"] = True
        if self.attention_backends and not dispatches_attention(denoiser):
            # its processors call torch's SDPA themselves, which picks the kernel: a backend would not apply
            applied["attention_backend"] = "torch sdpa (the model's processors call it directly)"
        elif self.attention_backends:
            applied["attention_backend"] = set_attention_backend(denoiser, self.attention_backends)
        if self.compile and self.compile_regions:
            denoiser.compile_repeated_blocks(fullgraph=False, mode=COMPILE_MODE, dynamic=COMPILE_DYNAMIC)
            applied["compiled"] = "per block"
        elif self.compile:
            denoiser.compile(fullgraph=True, mode=COMPILE_MODE, dynamic=COMPILE_DYNAMIC)
            applied["compiled"] = True
        return applied


def drop_unfused_projections(model: torch.nn.Module) -> int:
    """Deletes the separate q/k/v projections diffusers' `fuse_qkv_projections` keeps beside the fused
    ones (so that it could unfuse): nothing calls them once fused, and they hold a second copy of the
    attention weights (FLUX: 2.15 B parameters, 4.3 GB in bf16, which FP8 would quantise too).
    Returns the number of parameters freed."""
    freed = 0
    for module in model.modules():
        if not getattr(module, "fused_projections", False):
            continue
        dead = []
        if hasattr(module, "to_qkv"):
            dead += ["to_q", "to_k", "to_v"]
        elif hasattr(module, "to_kv"):  # cross-attention: the query keeps its own projection
            dead += ["to_k", "to_v"]
        if hasattr(module, "to_added_qkv"):
            dead += ["add_q_proj", "add_k_proj", "add_v_proj"]
        for name in dead:
            projection = getattr(module, name, None)
            if isinstance(projection, torch.nn.Module):
                freed += sum(parameter.numel() for parameter in projection.parameters())
                delattr(module, name)
    return freed


def dispatches_attention(model: torch.nn.Module) -> bool:
    """Whether the model's attention goes through diffusers' dispatcher (which `set_attention_backend`
    steers) rather than calling torch's SDPA itself (PixArt's processors do)."""
    processors = [module.processor for module in model.modules() if hasattr(module, "processor")]
    return bool(processors) and all(hasattr(processor, "_attention_backend") for processor in processors)


def set_attention_backend(model: torch.nn.Module, backends: Sequence[str]) -> str:
    """Sets the first of `backends` this machine has on the model's attention processors only; diffusers
    also makes it the process-wide default, which is put back so other models keep their own."""
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    previous = _AttentionBackendRegistry._active_backend
    try:
        for backend in backends:
            try:
                model.set_attention_backend(backend)
            except (ImportError, RuntimeError, ValueError) as error:
                logger.info("attention backend %s is not available here: %s", backend, error)
                continue
            return backend
        return "native"
    finally:
        _AttentionBackendRegistry.set_active_backend(previous)


class TextEmbeddingCache:
    """Least-recently-used text embeddings, keyed by the text and how it was encoded."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> int:
        """Drops every entry; returns how many there were."""
        count = len(self._entries)
        self._entries.clear()
        return count

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


class _WarmUpRequest:
    """The request `warm_up` runs as: never cancelled, logs nowhere."""

    request_id = "warm-up"

    def log(self, message: str, level: str = "INFO") -> None:
        pass

    def is_cancelled(self) -> bool:
        return False

    def raise_if_cancelled(self) -> None:
        pass

    def add_provenance(self, fields: Any) -> None:
        pass


WARM_UP = _WarmUpRequest()


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
    """A diffusers pipeline on one device with its speed-ups applied, and its prompt-embedding cache.
    Endpoints that run the same model share it (the nine editing endpoints all run FLUX.1 Kontext
    [dev]): it stays loaded while one of them is warm and is freed once the worker has evicted them
    all (the worker evicts the endpoints of one model together, see `memory_group`)."""

    pipe: Any
    applied_speedups: dict[str, Any]
    text_embeddings: TextEmbeddingCache
    # how the compiled denoiser was warmed (set by the first endpoint that warms it)
    compile_state: dict[str, Any] = field(default_factory=dict)


# what the endpoints of one device share, alive while one of them holds it: loaded pipelines and the
# safety checker (one per device, whichever diffusion endpoints are warm)
_LOADED: weakref.WeakValueDictionary[Hashable, Any] = weakref.WeakValueDictionary()
_LOADING = threading.Lock()


def _shared(key: Hashable, build: Callable[[], Any]) -> Any:
    """The live object under `key`, built once: endpoints that need the same thing share it."""
    with _LOADING:
        value = _LOADED.get(key)
        if value is None:
            value = build()
            _LOADED[key] = value
        return value


def _load_shared(
    diffusers_class: str,
    model: str,
    device: torch.device,
    dtype: torch.dtype,
    speedups: Speedups,
    weights: Weights,
    plan: MemoryPlan | None = None,
) -> LoadedPipeline:
    """The model's pipeline on `device`, loaded once for every endpoint that runs it. Before loading,
    the memory plan is checked against the device (raising OutOfMemoryError, so the worker evicts
    the least recently used models first, when it does not fit in what is free)."""
    import diffusers

    # verified on every setup, so a store that changed refuses even while another endpoint holds the model
    folder = weights.verified_folder(model)

    def load() -> LoadedPipeline:
        check_memory_plan(plan, device)
        pipeline_class = getattr(diffusers, diffusers_class)
        pipe = pipeline_class.from_pretrained(folder, dtype=dtype, use_safetensors=True, local_files_only=True)
        pipe = pipe.to(device)
        pipe.set_progress_bar_config(disable=True)
        capacity = TEXT_EMBEDDING_CACHE_SIZE if speedups.cache_text_embeddings else 0
        return LoadedPipeline(pipe, speedups.apply(pipe.transformer), TextEmbeddingCache(capacity))

    return _shared((diffusers_class, str(folder), str(device), dtype, speedups), load)


def _load_safety_checker(weights: Weights, device: torch.device, dtype: torch.dtype) -> SafetyChecker:
    folder = weights.verified_folder(SAFETY_CHECKER)
    return _shared(("safety-checker", str(folder), str(device), dtype), lambda: SafetyChecker(folder, device, dtype))


# -- the memory plan ---------------------------------------------------------------------------------

# bytes per element of each safetensors dtype; the floating ones are loaded in the pipeline's dtype
SAFETENSORS_FLOATS = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
SAFETENSORS_OTHER_BYTES = {"I64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1}
# what stays live at once in a transformer block, in units of the hidden size per token (FLUX's
# single-stream block: norm, q/k/v, MLP (4x), their concatenation and the projection back), and in a
# VAE decoder at full resolution, in units of its first block's channels per pixel (the upsampled
# input at twice the channels, its norm, the convolutions' outputs): estimates, which
# `python -m bench.gpu_smoke` checks against measured peaks
TRANSFORMER_LIVE_WIDTHS = 14
VAE_LIVE_CHANNELS = 8


def check_memory_plan(plan: MemoryPlan | None, device: torch.device) -> None:
    """Refuses to load what cannot fit on a CUDA device: an error naming the sizes when the device is
    too small for it at all, OutOfMemoryError (the worker then evicts other models and tries again)
    when it is only too full now. Nothing is checked on the CPU."""
    if plan is None or device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    memory_verdict(plan, free=free, total=total, device=str(device))


def memory_verdict(plan: MemoryPlan, *, free: int, total: int, device: str) -> None:
    """`check_memory_plan` with the device's free and total bytes given."""
    needed = plan.weights + plan.safety_checker + plan.activations
    if needed > total:
        raise KilnError(
            f"{plan.model} needs about {needed / GIB:.1f} GiB of device memory (weights "
            f"{plan.weights / GIB:.1f} GiB, largest request {plan.activations / GIB:.1f} GiB); {device} has "
            f"{total / GIB:.1f} GiB in all",
            status_code=501,
            error_type="insufficient_device_memory",
        )
    if needed > free:
        raise torch.OutOfMemoryError(
            f"memory plan: loading {plan.model} needs about {needed / GIB:.1f} GiB, "
            f"{device} has {free / GIB:.1f} GiB free"
        )


def safetensors_elements(folder: Path) -> dict[str, tuple[int, int]]:
    """Per component (the first folder under `folder`, "" for files at its top): the number of
    floating-point elements and the bytes of everything else, from the safetensors headers alone."""
    counts: dict[str, list[int]] = {}
    for path in sorted(folder.rglob("*.safetensors")):
        relative = path.relative_to(folder)
        component = relative.parts[0] if len(relative.parts) > 1 else ""
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        entry = counts.setdefault(component, [0, 0])
        for name, tensor in header.items():
            if name == "__metadata__":
                continue
            elements = math.prod(tensor["shape"])
            if tensor["dtype"] in SAFETENSORS_FLOATS:
                entry[0] += elements
            else:
                entry[1] += elements * SAFETENSORS_OTHER_BYTES.get(tensor["dtype"], 1)
    return {component: (floats, other) for component, (floats, other) in counts.items()}


def resident_bytes(counts: dict[str, tuple[int, int]], itemsize: int) -> int:
    """Bytes on the device of components with these element counts, floats in `itemsize` bytes."""
    return sum(floats * itemsize + other for floats, other in counts.values())


# folder -> (model_index.json's mtime, element counts, transformer config, VAE config)
_PLAN_INPUTS: dict[str, tuple[Any, ...]] = {}


def planned_folder(folder: Path) -> tuple[dict[str, tuple[int, int]], dict[str, Any], dict[str, Any]] | None:
    """A model folder's element counts and its transformer's and VAE's configs (read again when the
    folder changes), or None when it holds no model."""
    index = folder / "model_index.json"
    try:
        stamp = index.stat().st_mtime_ns
    except OSError:
        if not folder.is_dir():
            return None
        stamp = None
    cached = _PLAN_INPUTS.get(str(folder))
    if cached is None or cached[0] != stamp:
        configs = []
        for component in ("transformer", "vae"):
            try:
                configs.append(json.loads((folder / component / "config.json").read_text()))
            except (OSError, ValueError):
                configs.append({})
        cached = (stamp, safetensors_elements(folder), *configs)
        _PLAN_INPUTS[str(folder)] = cached
    return cached[1], cached[2], cached[3]


class DiffusionPipeline(Pipeline[BaseModel, GenerationT, GeneratedImages]):
    """The shared part of Kiln's diffusers endpoints; see the module docstring."""

    # the diffusers pipeline class, by name (diffusers is imported only when a worker sets up)
    diffusers_class: ClassVar[str]
    # the weights.lock model holding that pipeline's folder
    model: ClassVar[str]
    bytes_per_input_pixel: ClassVar[int] = 48  # measured 39-48 B/px: decode, float copy, resize of the input

    # the largest request the endpoint accepts, for its memory plan: pixels generated per image, images
    # per request, image token sequences per image (Kontext: the output and its references), text
    # tokens, and how many passes guidance batches together (PixArt's classifier-free guidance: 2)
    plan_pixels: ClassVar[int] = 1024 * 1024
    plan_images: ClassVar[int] = 1
    plan_image_sequences: ClassVar[int] = 1
    plan_text_tokens: ClassVar[int] = 512
    plan_guidance_batch: ClassVar[int] = 1
    # the sizes `warm_up` runs (once compiled with dynamic shapes, other sizes reuse the graph)
    warm_up_sizes: ClassVar[tuple[tuple[int, int], ...]] = ((1024, 1024), (1024, 768))

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
        self.speedups = self.speedups_for(device, settings.speedups)
        plan = self.memory_plan(weights, device.type)
        self.loaded = _load_shared(self.diffusers_class, self.model, device, self.dtype, self.speedups, weights, plan)
        self.pipe, self.applied_speedups = self.loaded.pipe, self.loaded.applied_speedups
        # one safety checker and one prompt-embedding cache per device and model, whichever endpoints use them
        self.safety_checker = _load_safety_checker(weights, device, self.dtype)
        self.text_embeddings = self.loaded.text_embeddings
        # endpoints of one group share their model: evicting one alone would free nothing
        self.memory_group = (self.diffusers_class, self.model, str(device))
        self.setup_endpoint(weights)
        if self.speedups.compile and not self.loaded.compile_state:
            self.warm_up()
        self.setup_provenance = {
            "weights": {name: weights.provenance(name) for name in self.models},
            "dtype": str(self.dtype).removeprefix("torch."),
            "speedups": self.applied_speedups,
            "compile": self.loaded.compile_state or {"compiled": False},
            "generator": "cpu, one per image, seeded seed + image index",
            "libraries": {name: version(name) for name in ("diffusers", "transformers")},
        }
        logger.info("%s loaded on %s (%s, speed-ups %s)", self.model, device, self.dtype, self.applied_speedups)

    def speedups_for(self, device: torch.device, enabled: bool) -> Speedups:
        """The speed-ups this endpoint applies on `device`."""
        return Speedups.for_device(device, enabled)

    def setup_endpoint(self, weights: Weights) -> None:
        """The endpoint's own set-up, once the shared model is loaded and before it is warmed up."""

    # -- memory -------------------------------------------------------------------------------------

    @classmethod
    def memory_plan(cls, weights: Weights, device_type: str = "cuda") -> MemoryPlan | None:
        """The device memory this endpoint needs on a device of this type, from the installed weights'
        safetensors headers and configs (nothing is loaded or hashed), or None when they are not
        installed."""
        model = planned_folder(weights.folder(cls.model))
        checker = planned_folder(weights.folder(SAFETY_CHECKER))
        if model is None:
            return None
        counts, transformer_config, vae_config = model
        itemsize = 2 if device_type == "cuda" else 4
        return cls.plan_memory(counts, checker[0] if checker else {}, transformer_config, vae_config, itemsize)

    @classmethod
    def plan_memory(
        cls,
        counts: dict[str, tuple[int, int]],
        checker_counts: dict[str, tuple[int, int]],
        transformer_config: dict[str, Any],
        vae_config: dict[str, Any],
        itemsize: int,
    ) -> MemoryPlan:
        """The plan for a model whose components have these element counts (see `safetensors_elements`)
        and configs, floats held in `itemsize` bytes."""
        return MemoryPlan(
            model=cls.model,
            weights=resident_bytes(counts, itemsize),
            safety_checker=resident_bytes(checker_counts, itemsize),
            extra=cls.extra_bytes(counts, itemsize),
            activations=cls.activation_bytes(transformer_config, vae_config, itemsize),
        )

    @classmethod
    def extra_bytes(cls, counts: dict[str, tuple[int, int]], itemsize: int) -> int:
        """What the endpoint loads beside the shared model on demand."""
        return 0

    @classmethod
    def activation_bytes(cls, transformer_config: dict[str, Any], vae_config: dict[str, Any], itemsize: int) -> int:
        """Estimated peak working memory of the largest request: the larger of one denoising step
        (every image's tokens through a block) and the VAE decoding every image at full size."""
        hidden = transformer_config.get("num_attention_heads", 24) * transformer_config.get("attention_head_dim", 128)
        tokens = cls.plan_pixels // 256 * cls.plan_image_sequences + cls.plan_text_tokens
        batch = cls.plan_images * cls.plan_guidance_batch
        denoising = batch * tokens * hidden * TRANSFORMER_LIVE_WIDTHS * itemsize
        channels = (vae_config.get("block_out_channels") or [128])[0]
        decoding = cls.plan_images * cls.plan_pixels * channels * VAE_LIVE_CHANNELS * itemsize
        return max(denoising, decoding)

    def release_extra_memory(self) -> bool:
        """Frees what this endpoint holds beyond its shared model (the worker calls it when a request
        ran out of memory with every other model evicted): here the cached prompt embeddings.
        Returns whether anything was freed."""
        return self.text_embeddings.clear() > 0

    # -- compile warm-up ----------------------------------------------------------------------------

    def warm_up(self, sizes: Sequence[tuple[int, int]] | None = None) -> dict[str, Any]:
        """Runs a short generation at each size, storing nothing, so that a compiled denoiser is
        compiled (or loaded from the compile cache) now, before the worker reports the endpoint ready,
        not on a user's request. `setup` calls it where the denoiser is compiled (CUDA); elsewhere it
        runs the same path uncompiled when called. Returns what it did (also in the provenance)."""
        import torch._dynamo.utils

        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        warmed = []
        for width, height in sizes or self.warm_up_sizes:
            generators = [torch.Generator("cpu").manual_seed(0)]
            with torch.inference_mode():
                self.generate(self.warm_up_generation(width, height), generators, [WARM_UP])
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            warmed.append([width, height])
        state = {
            "compiled": bool(self.applied_speedups.get("compiled")),
            "dynamic_shapes": COMPILE_DYNAMIC if self.applied_speedups.get("compiled") else None,
            "warmed_sizes": warmed,
            "graphs_compiled": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs,
            "seconds": round(time.perf_counter() - start, 3),
        }
        self.loaded.compile_state.update(state)
        logger.info("%s warmed on %s in %.1fs: %s", self.model, self.device, state["seconds"], state)
        return state

    def warm_up_generation(self, width: int, height: int) -> GenerationT:
        """A minimal generation of this endpoint at `width` x `height` (a couple of steps, one image,
        no safety check), for `warm_up`."""
        raise NotImplementedError(f"{type(self).__name__} does not say how to warm up")

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
