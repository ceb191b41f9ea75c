"""Device memory of the diffusion endpoints: what the CUDA path would waste or leak, checked on the CPU.

- Fused QKV projections must replace the separate q/k/v weights, not sit beside them (diffusers keeps
  them: FLUX grew from 11.90 B to 14.05 B parameters, and FP8 quantised the dead copies too).
- The attention backend is set only where the model's processors use it, never process-wide.
- torchao's FP8 quantisation must not change the process's global inductor settings.
- One bf16 FLUX transformer serves every acceleration level it can; `regular` and `high` share one
  FP8 copy, which is dropped first when memory runs out.
- The nine editing endpoints share one model, one safety checker and one prompt-embedding cache;
  evicting them frees the model; a memory plan from the installed weights' headers is checked
  before loading and shown in /health.
- Compile warm-up runs before an endpoint is ready; on the CPU nothing is compiled.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import sys
import types
import weakref
from collections.abc import Iterator

import pytest
import torch

from pipelines.contract import GIB, KilnError, MemoryPlan, PipelineSettings
from pipelines.diffusion import (
    Speedups,
    drop_unfused_projections,
    memory_verdict,
    safetensors_elements,
)
from pipelines.flux_image_to_image import FluxImageToImagePipeline
from pipelines.pixart_sigma import PixArtSigmaPipeline
from pipelines.step1x_edit import Step1XEditPipeline
from server.pipeline_cache import PipelineCache, use_compile_cache
from server.weights import WeightsLock, WeightsStore
from testkit.architectures import flux_transformer, pixart_sigma_transformer
from testkit.memory_plan import element_counts, memory_plan_table
from testkit.tiny_diffusion import build_pixart_store
from testkit.tiny_flux import FLUX_DEV, FLUX_KONTEXT, build_flux_store

CPU = torch.device("cpu")
TINY_FLUX = {
    "in_channels": 16,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,
    "pooled_projection_dim": 32,
    "axes_dims_rope": (4, 4, 8),
}
TINY_PIXART = {
    "sample_size": 8,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 3,
    "caption_channels": 32,
    "cross_attention_dim": 24,
}


def parameters(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def flux_inputs(tokens: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(1, tokens, 16, generator=generator),
        "encoder_hidden_states": torch.randn(1, 8, 32, generator=generator),
        "pooled_projections": torch.randn(1, 32, generator=generator),
        "timestep": torch.tensor([0.5]),
        "guidance": torch.tensor([3.5]),
        "txt_ids": torch.zeros(8, 3),
        "img_ids": torch.zeros(tokens, 3),
    }


def pixart_inputs() -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "hidden_states": torch.randn(2, 4, 8, 8, generator=generator),
        "encoder_hidden_states": torch.randn(2, 6, 32, generator=generator),
        "timestep": torch.tensor([500, 500]),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }


# -- fused QKV ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "sizes", "inputs"),
    [(flux_transformer, TINY_FLUX, flux_inputs), (pixart_sigma_transformer, TINY_PIXART, pixart_inputs)],
    ids=["flux", "pixart"],
)
def test_fusing_qkv_keeps_the_parameter_count_and_the_outputs(build, sizes, inputs):
    torch.manual_seed(0)
    model = build(**sizes).eval()
    before = parameters(model)
    with torch.inference_mode():
        unfused = model(**inputs(), return_dict=False)[0]
    applied = Speedups(fuse_qkv=True).apply(model)
    assert applied["fused_qkv"] is True
    assert parameters(model) == before, "the unfused q/k/v projections must not stay beside the fused ones"
    with torch.inference_mode():
        fused = model(**inputs(), return_dict=False)[0]
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-5)


def test_at_full_size_fusing_frees_what_diffusers_keeps():
    """FLUX.1 on the meta device: diffusers' fusing leaves 14.05 B parameters, Kiln's 11.90 B."""
    with torch.device("meta"):
        model = flux_transformer()
    before = parameters(model)
    model.fuse_qkv_projections()
    kept = parameters(model)
    freed = drop_unfused_projections(model)
    assert (round(before / 1e9, 2), round(kept / 1e9, 2)) == (11.90, 14.05)
    assert parameters(model) == before and freed == kept - before


# -- attention backend -------------------------------------------------------------------------------


def test_the_attention_backend_is_set_where_it_applies_and_not_process_wide():
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    default = _AttentionBackendRegistry._active_backend
    speedups = Speedups(attention_backends=("no-such-backend", "_native_math"))
    flux = flux_transformer(**TINY_FLUX)
    assert speedups.apply(flux)["attention_backend"] == "_native_math"
    assert _AttentionBackendRegistry._active_backend == default
    # PixArt's processors call torch's SDPA themselves: a backend would be recorded but never used
    pixart = pixart_sigma_transformer(**TINY_PIXART)
    assert speedups.apply(pixart)["attention_backend"].startswith("torch sdpa")
    assert _AttentionBackendRegistry._active_backend == default


# -- torchao ----------------------------------------------------------------------------------------


@pytest.fixture
def fake_torchao(monkeypatch) -> Iterator[list]:
    """torchao 0.18's API as far as Kiln uses it (torchao is the `cuda` extra; CPU machines lack it):
    its config's `set_inductor_config` defaults to True, which sets inductor options process-wide."""
    import torch._inductor.config as inductor

    calls = []

    @dataclasses.dataclass
    class Float8DynamicActivationFloat8WeightConfig:
        granularity: object = None
        set_inductor_config: bool = True

    def quantize_(module, config, filter_fn=None, device=None):
        calls.append(config)
        if config.set_inductor_config:  # torchao.quantization.utils.recommended_inductor_config_setter
            inductor.coordinate_descent_tuning = True
            inductor.force_fuse_int_mm_with_mul = True

    quantization = types.ModuleType("torchao.quantization")
    quantization.Float8DynamicActivationFloat8WeightConfig = Float8DynamicActivationFloat8WeightConfig
    quantization.PerRow = type("PerRow", (), {})
    quantization.quantize_ = quantize_
    monkeypatch.setitem(sys.modules, "torchao", types.ModuleType("torchao"))
    monkeypatch.setitem(sys.modules, "torchao.quantization", quantization)
    # the config module's own patch: pytest's monkeypatch would delete its options on undo
    with inductor.patch(coordinate_descent_tuning=False, force_fuse_int_mm_with_mul=False):
        yield calls


def test_fp8_quantisation_leaves_the_global_inductor_settings_alone(fake_torchao):
    import torch._inductor.config as inductor

    from pipelines.flux_image_to_image import quantize_fp8

    quantize_fp8(torch.nn.Linear(4, 4))
    assert [config.set_inductor_config for config in fake_torchao] == [False]
    assert inductor.coordinate_descent_tuning is False and inductor.force_fuse_int_mm_with_mul is False


# -- the plan ----------------------------------------------------------------------------------------


def test_the_plan_refuses_what_cannot_fit_and_evicts_for_what_fits_when_free():
    plan = MemoryPlan("flux-1-dev", weights=32 * GIB, safety_checker=GIB // 4, extra=12 * GIB, activations=8 * GIB)
    memory_verdict(plan, free=60 * GIB, total=80 * GIB, device="cuda:0")
    with pytest.raises(torch.OutOfMemoryError, match="needs about 40.2 GiB, cuda:0 has 30.0 GiB free"):
        memory_verdict(plan, free=30 * GIB, total=80 * GIB, device="cuda:0")
    with pytest.raises(KilnError, match="cuda:0 has 24.0 GiB in all") as refused:
        memory_verdict(plan, free=24 * GIB, total=24 * GIB, device="cuda:0")
    assert refused.value.error_type == "insufficient_device_memory"


def test_full_size_plan_matches_the_released_models():
    """The README's host-requirements table: bf16 weights as published (FLUX.1 [dev] 31.4 GB, PixArt-Sigma
    about 10 GB), FLUX image-to-image's FP8 copy, and the largest request's estimated activations."""
    rows = {row["endpoints"]: row for row in memory_plan_table()}
    pixart, flux, kontext = (
        rows["fal-ai/pixart-sigma"],
        rows["fal-ai/flux/dev/image-to-image"],
        rows["the nine editing endpoints (FLUX.1 Kontext [dev])"],
    )
    assert (pixart["parameters_b"], flux["parameters_b"]) == (5.457, 16.871)
    assert (pixart["weights_gib"], flux["weights_gib"], kontext["weights_gib"]) == (10.16, 31.42, 31.42)
    assert (flux["extra_gib"], kontext["extra_gib"]) == (11.08, 0.0)
    assert pixart["safety_checker_gib"] == 0.16
    assert rows["all of them warm on one device"]["total_gib"] > 80, "an 80 GB card cannot keep all warm"


# -- on tiny models -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flux_store(tmp_path_factory) -> WeightsStore:
    tiny = build_flux_store(tmp_path_factory.mktemp("flux"))
    return WeightsStore(tiny.store, WeightsLock.load(tiny.lock))


@pytest.fixture(scope="module")
def pixart_store(tmp_path_factory) -> WeightsStore:
    tiny = build_pixart_store(tmp_path_factory.mktemp("pixart"))
    return WeightsStore(tiny.store, WeightsLock.load(tiny.lock))


@pytest.mark.slow
def test_the_plan_counts_exactly_what_loads(flux_store, pixart_store):
    """The plan read from safetensors headers equals the bytes the loaded components hold."""
    for store, cls in ((flux_store, FluxImageToImagePipeline), (pixart_store, PixArtSigmaPipeline)):
        plan = cls.memory_plan(store, "cpu")
        pipeline = cls()
        pipeline.setup(CPU, store, PipelineSettings(speedups=False))
        loaded = sum(
            floats * 4 + other
            for component in pipeline.pipe.components.values()
            if isinstance(component, torch.nn.Module)
            for floats, other in [element_counts(component)]
        )
        assert plan.weights == loaded
        assert plan.safety_checker == sum(
            floats * 4 + other for floats, other in [element_counts(pipeline.safety_checker.model)]
        )
        assert plan.extra == 0 and plan.activations > 0, "no FP8 copy on the CPU"
        assert safetensors_elements(store.folder(cls.model))["transformer"] == element_counts(pipeline.pipe.transformer)


@pytest.mark.slow
def test_the_editing_endpoints_share_one_model_checker_and_cache_and_are_evicted_together(flux_store):
    """Evicting one of them alone would free nothing; once their group is evicted the model is gone."""
    from pipelines.image_editing_background_change import BackgroundChangePipeline
    from pipelines.luma_photon_modify import LumaPhotonModifyPipeline

    cache = PipelineCache(CPU, flux_store, PipelineSettings())
    editing = [cache.get(cls) for cls in (Step1XEditPipeline, BackgroundChangePipeline, LumaPhotonModifyPipeline)]
    img2img = cache.get(FluxImageToImagePipeline)
    assert len({id(pipeline.pipe) for pipeline in editing}) == 1
    assert len({id(pipeline.safety_checker) for pipeline in [*editing, img2img]}) == 1
    assert len({id(pipeline.text_embeddings) for pipeline in editing}) == 1
    kontext = weakref.ref(editing[0].pipe)
    del editing
    # a request of one editing endpoint ran out of memory: its own group is not evicted for it
    cache.release_memory(keep=cache.get(Step1XEditPipeline))
    assert FluxImageToImagePipeline.endpoint_id not in cache.warm() and len(cache.warm()) == 3
    # the LRU eviction for another model takes the whole group, and with it the model
    assert cache._evict_one(keep=cache.get(FluxImageToImagePipeline)) is True
    gc.collect()
    assert cache.warm() == [FluxImageToImagePipeline.endpoint_id]
    assert kontext() is None, "the shared Kontext pipeline is freed once its endpoints are evicted"


@pytest.mark.slow
def test_acceleration_levels_share_transformers_and_the_fp8_copy_goes_first(flux_store, fake_torchao, monkeypatch):
    """`none` and the cache share the bf16 transformer; `regular` and `high` share one FP8 copy, which
    out-of-memory recovery drops (FP8 is faked on the CPU: torchao's quantisation is a no-op here)."""
    import pipelines.flux_image_to_image as module

    monkeypatch.setattr(module, "fp8_unavailable_reason", lambda device: None)
    cache = PipelineCache(CPU, flux_store, PipelineSettings())
    cache.get(Step1XEditPipeline)
    img2img = cache.get(FluxImageToImagePipeline)
    base = img2img.pipe.transformer
    generation = img2img.warm_up_generation(32, 32)
    for level in ("none", "high", "regular", "high", "none"):
        img2img.generate(
            dataclasses.replace(generation, acceleration=level), [torch.Generator().manual_seed(0)], [_Quiet()]
        )
        used = img2img.denoisers[img2img.effective_settings(level).fp8]
        assert (used is base) == (level == "none") and used.is_cache_enabled == (level == "high")
    assert set(img2img.denoisers) == {False, True} and img2img.denoisers[False] is base
    assert not base.is_cache_enabled and len(fake_torchao) == 1, "one FP8 copy, quantised once"
    assert parameters(img2img.denoisers[True]) == parameters(base)
    cache.release_memory(keep=img2img)
    assert set(img2img.denoisers) == {False} and cache.warm() == [FluxImageToImagePipeline.endpoint_id]


@pytest.mark.slow
def test_without_fp8_high_hooks_the_cache_on_the_one_bf16_transformer(flux_store):
    img2img = FluxImageToImagePipeline()
    img2img.setup(CPU, flux_store, PipelineSettings())
    generation = img2img.warm_up_generation(32, 32)
    for level, cached in (("high", True), ("regular", False), ("high", True), ("none", False)):
        img2img.generate(
            dataclasses.replace(generation, acceleration=level), [torch.Generator().manual_seed(0)], [_Quiet()]
        )
        assert img2img.pipe.transformer.is_cache_enabled == cached
    assert list(img2img.denoisers) == [False]


class _Quiet:
    request_id = "test"

    def log(self, message, level="INFO"):
        pass

    def is_cancelled(self):
        return False

    def raise_if_cancelled(self):
        pass


# -- compile warm-up ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_on_the_cpu_nothing_is_compiled_and_the_warm_up_path_reports_its_state(flux_store):
    kontext = Step1XEditPipeline()
    kontext.setup(CPU, flux_store, PipelineSettings())
    assert kontext.setup_provenance["compile"] == {"compiled": False} or kontext.loaded.compile_state
    state = kontext.warm_up([(48, 32), (32, 48)])
    assert state["compiled"] is False and state["dynamic_shapes"] is None
    assert state["warmed_sizes"] == [[48, 32], [32, 48]] and state["graphs_compiled"] == 0
    assert state["seconds"] > 0 and kontext.loaded.compile_state["warmed_sizes"] == state["warmed_sizes"]


@pytest.mark.slow
def test_a_compiling_endpoint_is_warmed_inside_setup_before_it_is_ready(pixart_store, monkeypatch):
    """What CUDA does, with torch.compile stubbed out: setup runs the warm-up sizes, so the worker's
    state turns `ready` only after the compile; endpoints sharing the model do not warm it again."""
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **options: compiled.append(options))
    monkeypatch.setattr(PixArtSigmaPipeline, "warm_up_sizes", ((64, 64), (64, 48)))
    monkeypatch.setattr(
        PixArtSigmaPipeline, "speedups_for", lambda self, device, enabled: Speedups(fuse_qkv=True, compile=True)
    )
    cache = PipelineCache(CPU, pixart_store, PipelineSettings())
    pipeline = cache.get(PixArtSigmaPipeline)
    assert cache.states() == {PixArtSigmaPipeline.endpoint_id: "ready"}
    assert compiled == [{"fullgraph": True, "mode": "max-autotune-no-cudagraphs", "dynamic": True}]
    state = pipeline.setup_provenance["compile"]
    assert state["compiled"] is True and state["warmed_sizes"] == [[64, 64], [64, 48]]


@pytest.mark.slow
def test_preload_sets_endpoints_up_before_requests(flux_store):
    cache = PipelineCache(CPU, flux_store, PipelineSettings())
    states = cache.preload([Step1XEditPipeline, FluxImageToImagePipeline])
    assert states == {Step1XEditPipeline.endpoint_id: "ready", FluxImageToImagePipeline.endpoint_id: "ready"}


def test_compiled_artefacts_go_to_the_data_dir(tmp_path, monkeypatch):
    from server.cli import build_parser, settings_from_args

    environment = {
        name: value for name, value in os.environ.items() if name not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")
    }
    monkeypatch.setattr(os, "environ", environment)  # what use_compile_cache sets goes with the test
    settings = settings_from_args(
        build_parser().parse_args(
            ["serve", "--data-dir", str(tmp_path), "--warm", "fal-ai/pixart-sigma, fal-ai/step1x-edit"]
        )
    )
    assert settings.warm_endpoints == ("fal-ai/pixart-sigma", "fal-ai/step1x-edit")
    use_compile_cache(settings.compile_cache_dir)
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "compile-cache" / "inductor")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "compile-cache" / "triton")


# -- /health ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_health_reports_each_endpoints_plan(tmp_path, registry):
    from tests.fixtures.apps import start_with_weights

    tiny = build_flux_store(tmp_path / "flux")
    client = start_with_weights(tmp_path / "data", tiny, registry)
    try:
        memory = client.get("/health").json()["memory"]
    finally:
        client.__exit__(None, None, None)
    assert memory[FluxImageToImagePipeline.endpoint_id]["model"] == FLUX_DEV
    assert memory[Step1XEditPipeline.endpoint_id]["model"] == FLUX_KONTEXT
    assert PixArtSigmaPipeline.endpoint_id not in memory, "its weights are not installed here"
    plan = memory[Step1XEditPipeline.endpoint_id]
    assert plan["total_gib"] == pytest.approx(
        plan["weights_gib"] + plan["safety_checker_gib"] + plan["extra_gib"] + plan["activations_gib"], abs=0.02
    )
