"""fal-ai/image-editing/object-removal: Remove objects from an image.

FLUX.1 Kontext [dev] with the instruction below; see pipelines/image_editing.py.
"""

from __future__ import annotations

from pydantic import Field

from pipelines.image_editing import ImageEditingInput, ImageEditingPipeline

TEMPLATE = (
    "Remove the {prompt} from the image and fill the area with background that matches its surroundings. "
    "Keep everything else exactly the same."
)


class ObjectRemovalInput(ImageEditingInput):
    prompt: str = Field("background people", description="Specify which objects to remove from the image.")


class ObjectRemovalPipeline(ImageEditingPipeline):
    endpoint_id = "fal-ai/image-editing/object-removal"
    Input = ObjectRemovalInput
    template = TEMPLATE
