"""Kiln's endpoints: fal endpoint id -> `module:Class` of its pipeline.

Adding an endpoint is adding one module here and one line to PIPELINES. Modules are imported when
the server starts, so a pipeline whose optional dependencies are missing is reported as unavailable
instead of stopping the server.
"""

PIPELINES: dict[str, str] = {
    "fal-ai/post-processing": "pipelines.post_processing:PostProcessingPipeline",
    "fal-ai/post-processing/sharpen": "pipelines.post_processing_sharpen:SharpenPipeline",
    "fal-ai/pixart-sigma": "pipelines.pixart_sigma:PixArtSigmaPipeline",
    "fal-ai/flux/dev/image-to-image": "pipelines.flux_image_to_image:FluxImageToImagePipeline",
    "fal-ai/image-editing/background-change": "pipelines.image_editing_background_change:BackgroundChangePipeline",
    "fal-ai/image-editing/face-enhancement": "pipelines.image_editing_face_enhancement:FaceEnhancementPipeline",
    "fal-ai/image-editing/color-correction": "pipelines.image_editing_color_correction:ColorCorrectionPipeline",
    "fal-ai/image-editing/object-removal": "pipelines.image_editing_object_removal:ObjectRemovalPipeline",
    "fal-ai/flux-pro/kontext/max/multi": "pipelines.flux_pro_kontext_max_multi:KontextMaxMultiPipeline",
    "fal-ai/step1x-edit": "pipelines.step1x_edit:Step1XEditPipeline",
    "fal-ai/bytedance/seededit/v3/edit-image": "pipelines.bytedance_seededit_v3_edit_image:SeedEditPipeline",
    "fal-ai/luma-photon/modify": "pipelines.luma_photon_modify:LumaPhotonModifyPipeline",
    "fal-ai/recraft/v3/image-to-image": "pipelines.recraft_v3_image_to_image:RecraftImageToImagePipeline",
    "fal-ai/image2pixel": "pipelines.image2pixel:Image2PixelPipeline",
}
