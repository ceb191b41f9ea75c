"""fal-ai/image-editing/background-change: Change the background of an image.

FLUX.1 Kontext [dev] with the instruction below; see pipelines/image_editing.py.
"""

from __future__ import annotations

from pydantic import Field

from pipelines.image_editing import ImageEditingInput, ImageEditingPipeline

TEMPLATE = (
    "Change the background to {prompt}. Keep the main subject exactly the same: same identity, pose, "
    "position, scale and framing."
)


class BackgroundChangeInput(ImageEditingInput):
    prompt: str = Field("beach sunset with palm trees", description="The desired background to apply.")


class BackgroundChangePipeline(ImageEditingPipeline):
    endpoint_id = "fal-ai/image-editing/background-change"
    Input = BackgroundChangeInput
    template = TEMPLATE
