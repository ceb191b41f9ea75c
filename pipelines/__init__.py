"""Kiln's endpoints: fal endpoint id -> `module:Class` of its pipeline.

Adding an endpoint is adding one module here and one line to PIPELINES. Modules are imported when
the server starts, so a pipeline whose optional dependencies are missing is reported as unavailable
instead of stopping the server.
"""

PIPELINES: dict[str, str] = {
    "fal-ai/post-processing": "pipelines.post_processing:PostProcessingPipeline",
    "fal-ai/post-processing/sharpen": "pipelines.post_processing_sharpen:SharpenPipeline",
    "fal-ai/pixart-sigma": "pipelines.pixart_sigma:PixArtSigmaPipeline",
}
