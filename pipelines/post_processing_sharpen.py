"""fal-ai/post-processing/sharpen: the sharpen effect of fal-ai/post-processing as its own endpoint.

Same kernels, same batching and the same output as the sharpen step of the full chain; the effect is
always on, so the input model has no `enable_sharpen`.
"""

from __future__ import annotations

import dataclasses

from pydantic import BaseModel, Field

from pipelines.contract import Image
from pipelines.post_processing import (
    SHARPEN,
    EffectsPipeline,
    KilnImageFields,
    SharpenFields,
)


class SharpenInput(SharpenFields, KilnImageFields):
    image_url: str = Field(description="URL of image to process")


class SharpenOutput(BaseModel):
    images: list[Image] = Field(description="The processed images with sharpen effect")


class SharpenPipeline(EffectsPipeline):
    endpoint_id = "fal-ai/post-processing/sharpen"
    Input = SharpenInput
    Output = SharpenOutput
    effects = (dataclasses.replace(SHARPEN, enabled=lambda inputs: True),)
