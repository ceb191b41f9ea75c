"""The memory plan of each diffusion endpoint for the released models: their full-size architectures
built on the meta device (no memory, no weights), counted, and planned as Kiln plans installed
weights. The numbers of the README's host-requirements table; bench/gpu_smoke.py prints them and
checks the estimates against a GPU.
"""

from __future__ import annotations

from typing import Any

import torch

# the table's rows: the endpoints of each model, and the class that plans for them
ENDPOINT_GROUPS = {
    "fal-ai/pixart-sigma": ("pixart", "pipelines.pixart_sigma", "PixArtSigmaPipeline"),
    "fal-ai/flux/dev/image-to-image": ("flux", "pipelines.flux_image_to_image", "FluxImageToImagePipeline"),
    "the nine editing endpoints (FLUX.1 Kontext [dev])": ("flux", "pipelines.step1x_edit", "Step1XEditPipeline"),
}
GIB = 1024**3


def element_counts(module: torch.nn.Module) -> tuple[int, int]:
    """Floating-point elements and other bytes of a module's weights, as its safetensors file holds
    them (tied weights once): what `pipelines.diffusion.safetensors_elements` reads from a file."""
    floats = other = 0
    for tensor in {id(t): t for t in module.state_dict(keep_vars=True).values()}.values():
        if tensor.is_floating_point():
            floats += tensor.numel()
        else:
            other += tensor.numel() * tensor.element_size()
    return floats, other


def full_size_components() -> dict[str, Any]:
    """Element counts of the released models' components, with the transformer and VAE configs."""
    from transformers import ViTConfig, ViTForImageClassification

    from testkit.architectures import (
        FLUX_TRANSFORMER,
        FLUX_VAE,
        PIXART_SIGMA_TRANSFORMER,
        SDXL_VAE,
        clip_text_encoder,
        flux_transformer,
        flux_vae,
        pixart_sigma_transformer,
        sdxl_vae,
        t5_encoder,
    )

    with torch.device("meta"):
        t5 = element_counts(t5_encoder())
        flux = {
            "transformer": element_counts(flux_transformer()),
            "text_encoder": element_counts(clip_text_encoder()),
            "text_encoder_2": t5,
            "vae": element_counts(flux_vae()),
        }
        pixart = {
            "transformer": element_counts(pixart_sigma_transformer()),
            "text_encoder": t5,
            "vae": element_counts(sdxl_vae()),
        }
        # fal's checker, Falconsai/nsfw_image_detection: ViT-base
        checker = {"": element_counts(ViTForImageClassification(ViTConfig(id2label={0: "normal", 1: "nsfw"})))}
    return {
        "pixart": (pixart, dict(PIXART_SIGMA_TRANSFORMER), dict(SDXL_VAE)),
        "flux": (flux, dict(FLUX_TRANSFORMER), dict(FLUX_VAE)),
        "checker": checker,
    }


def memory_plan_table(itemsize: int = 2) -> list[dict[str, Any]]:
    """Each row of endpoints' plan at full size (bf16 by default), then all of them warm on one device:
    every model once, one safety checker, the FP8 copy, and the largest request's activations."""
    import importlib

    components = full_size_components()
    rows = []
    for label, (model, module, name) in ENDPOINT_GROUPS.items():
        cls = getattr(importlib.import_module(module), name)
        counts, transformer, vae = components[model]
        plan = cls.plan_memory(counts, components["checker"], transformer, vae, itemsize)
        parameters = sum(floats for floats, _ in counts.values())
        rows.append({"endpoints": label, "parameters_b": round(parameters / 1e9, 3), **plan.as_json()})
    models = sum(row["weights_gib"] + row["extra_gib"] for row in rows)
    largest = max(row["activations_gib"] for row in rows)
    rows.append(
        {
            "endpoints": "all of them warm on one device",
            "total_gib": round(models + rows[0]["safety_checker_gib"] + largest, 2),
        }
    )
    return rows
