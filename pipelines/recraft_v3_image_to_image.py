"""fal-ai/recraft/v3/image-to-image: an image changed from a prompt in one of Recraft's styles.

fal runs Recraft's proprietary V3; Kiln runs FLUX.1 Kontext [dev]. The instruction is the prompt,
then the style in words unless it is `any` (`digital_illustration/pixel_art` -> "Style: digital
illustration, pixel art."), then the preferred colors as hex codes when given. `strength` (0 keeps
the image almost as is, 1 barely resembles it) starts the edit from the input image noised to that
level, with that share of Kontext's steps. Recraft's `style_id` (a custom style stored at Recraft)
and `negative_prompt` (Kontext has no negative branch) are accepted and reported as ignored. The
result is a PNG; the safety checker always runs.

Kiln extension: `seed` (drawn at random if omitted, reported in the provenance).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from pipelines.contract import File, Image, RequestContext
from pipelines.flux import Seed, SyncMode
from pipelines.kontext_editing import EditSpec, KontextEditPipeline, ignored_fields

STYLES = (
    "any",
    "realistic_image",
    "digital_illustration",
    "vector_illustration",
    "realistic_image/b_and_w",
    "realistic_image/hard_flash",
    "realistic_image/hdr",
    "realistic_image/natural_light",
    "realistic_image/studio_portrait",
    "realistic_image/enterprise",
    "realistic_image/motion_blur",
    "realistic_image/evening_light",
    "realistic_image/faded_nostalgia",
    "realistic_image/forest_life",
    "realistic_image/mystic_naturalism",
    "realistic_image/natural_tones",
    "realistic_image/organic_calm",
    "realistic_image/real_life_glow",
    "realistic_image/retro_realism",
    "realistic_image/retro_snapshot",
    "realistic_image/urban_drama",
    "realistic_image/village_realism",
    "realistic_image/warm_folk",
    "digital_illustration/pixel_art",
    "digital_illustration/hand_drawn",
    "digital_illustration/grain",
    "digital_illustration/infantile_sketch",
    "digital_illustration/2d_art_poster",
    "digital_illustration/handmade_3d",
    "digital_illustration/hand_drawn_outline",
    "digital_illustration/engraving_color",
    "digital_illustration/2d_art_poster_2",
    "digital_illustration/antiquarian",
    "digital_illustration/bold_fantasy",
    "digital_illustration/child_book",
    "digital_illustration/child_books",
    "digital_illustration/cover",
    "digital_illustration/crosshatch",
    "digital_illustration/digital_engraving",
    "digital_illustration/expressionism",
    "digital_illustration/freehand_details",
    "digital_illustration/grain_20",
    "digital_illustration/graphic_intensity",
    "digital_illustration/hard_comics",
    "digital_illustration/long_shadow",
    "digital_illustration/modern_folk",
    "digital_illustration/multicolor",
    "digital_illustration/neon_calm",
    "digital_illustration/noir",
    "digital_illustration/nostalgic_pastel",
    "digital_illustration/outline_details",
    "digital_illustration/pastel_gradient",
    "digital_illustration/pastel_sketch",
    "digital_illustration/pop_art",
    "digital_illustration/pop_renaissance",
    "digital_illustration/street_art",
    "digital_illustration/tablet_sketch",
    "digital_illustration/urban_glow",
    "digital_illustration/urban_sketching",
    "digital_illustration/vanilla_dreams",
    "digital_illustration/young_adult_book",
    "digital_illustration/young_adult_book_2",
    "vector_illustration/bold_stroke",
    "vector_illustration/chemistry",
    "vector_illustration/colored_stencil",
    "vector_illustration/contour_pop_art",
    "vector_illustration/cosmics",
    "vector_illustration/cutout",
    "vector_illustration/depressive",
    "vector_illustration/editorial",
    "vector_illustration/emotional_flat",
    "vector_illustration/infographical",
    "vector_illustration/marker_outline",
    "vector_illustration/mosaic",
    "vector_illustration/naivector",
    "vector_illustration/roundish_flat",
    "vector_illustration/segmented_colors",
    "vector_illustration/sharp_contrast",
    "vector_illustration/thin",
    "vector_illustration/vector_photo",
    "vector_illustration/vivid_shapes",
    "vector_illustration/engraving",
    "vector_illustration/line_art",
    "vector_illustration/line_circuit",
    "vector_illustration/linocut",
)
Style = Literal[STYLES]


class RGBColor(BaseModel):
    r: int = Field(0, ge=0, le=255, description="Red color value")
    g: int = Field(0, ge=0, le=255, description="Green color value")
    b: int = Field(0, ge=0, le=255, description="Blue color value")

    @property
    def hex(self) -> str:
        return f"#{self.r:02x}{self.g:02x}{self.b:02x}"


class RecraftImageToImageInput(BaseModel):
    prompt: str = Field(max_length=1000, description="A text description of areas to change.")
    image_url: str = Field(
        description="The URL of the image to modify. Must be less than 5 MB in size, have resolution less than 16 MP "
        "and max dimension less than 4096 pixels."
    )
    strength: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Defines the difference with the original image, should lie in [0, 1], where 0 means almost "
        "identical, and 1 means miserable similarity",
    )
    style: Style = Field("realistic_image", description="The style of the generated images.")
    colors: list[RGBColor] = Field(default_factory=list, description="An array of preferable colors")
    style_id: str | None = Field(
        None, description="The ID of the custom style reference (optional). Kiln: accepted and ignored."
    )
    negative_prompt: str | None = Field(
        None, description="A text description of undesired elements on an image. Kiln: accepted and ignored."
    )
    sync_mode: SyncMode = False
    seed: Seed = None


class RecraftImageToImageOutput(BaseModel):
    images: list[File] = Field(description="The generated images")


def instruction(prompt: str, style: str, colors: list[RGBColor]) -> str:
    """The prompt, then the style and colors in words."""
    prompt = prompt.strip()
    parts = [prompt if prompt.endswith((".", "!", "?")) else f"{prompt}."]
    if style != "any":
        parts.append(f"Style: {style.replace('/', ', ').replace('_', ' ')}.")
    if colors:
        parts.append(f"Use the colors {', '.join(color.hex for color in colors)}.")
    return " ".join(parts)


class RecraftImageToImagePipeline(KontextEditPipeline):
    endpoint_id = "fal-ai/recraft/v3/image-to-image"
    Input = RecraftImageToImageInput
    Output = RecraftImageToImageOutput

    def spec(self, inputs: RecraftImageToImageInput) -> EditSpec:
        return EditSpec(
            instruction=instruction(inputs.prompt, inputs.style, inputs.colors),
            image_urls=(("image_url", inputs.image_url),),
            seed=inputs.seed,
            denoise=inputs.strength,
            sync_mode=inputs.sync_mode,
            ignored=ignored_fields(inputs, ["style_id", "negative_prompt"]),
        )

    def output(self, result, images: list[Image], request: RequestContext) -> RecraftImageToImageOutput:
        return RecraftImageToImageOutput(images=[File.of(image) for image in images])
