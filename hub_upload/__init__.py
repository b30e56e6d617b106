"""Export, conversion and Hub upload of LLaVA-OneVision-2 checkpoints (`llava_onevision2.hub_upload`)."""
