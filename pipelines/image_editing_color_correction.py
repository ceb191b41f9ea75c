"""fal-ai/image-editing/color-correction: Correct the colors of an image.

FLUX.1 Kontext [dev] with the instruction below; see pipelines/image_editing.py.
"""

from __future__ import annotations

from pipelines.image_editing import ImageEditingInput, ImageEditingPipeline

TEMPLATE = (
    "Correct the colors of this photo: neutral white balance, natural skin tones, balanced exposure and "
    "contrast, no color cast. Keep the content, composition and every detail unchanged."
)


class ColorCorrectionInput(ImageEditingInput):
    """No prompt: the instruction is fixed."""


class ColorCorrectionPipeline(ImageEditingPipeline):
    endpoint_id = "fal-ai/image-editing/color-correction"
    Input = ColorCorrectionInput
    template = TEMPLATE
