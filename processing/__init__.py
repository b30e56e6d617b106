"""Image, video and codec processors for LLaVA-OneVision-2 (`llava_onevision2.processing`).

Files here are shipped as remote code next to checkpoints: they import only each other and transformers,
never `llava_onevision2.modeling`.
"""
