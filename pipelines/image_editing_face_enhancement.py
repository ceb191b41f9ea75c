"""fal-ai/image-editing/face-enhancement: Enhance facial features while maintaining natural look.

FLUX.1 Kontext [dev] with the instruction below; see pipelines/image_editing.py.
"""

from __future__ import annotations

from pipelines.image_editing import ImageEditingInput, ImageEditingPipeline

TEMPLATE = (
    "Enhance the face in this photo: sharpen the facial details, clean up the skin texture and improve "
    "the lighting on the face, while keeping the person's identity, expression and a natural look. Keep "
    "everything else unchanged."
)


class FaceEnhancementInput(ImageEditingInput):
    """No prompt: the instruction is fixed."""


class FaceEnhancementPipeline(ImageEditingPipeline):
    endpoint_id = "fal-ai/image-editing/face-enhancement"
    Input = FaceEnhancementInput
    template = TEMPLATE
