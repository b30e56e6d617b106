"""Image, video and codec processors for LLaVA-OneVision-2 (`llava_onevision2.processing`).

Files here are shipped as remote code next to checkpoints: they import only each other and transformers,
never `llava_onevision2.modeling`.
"""

from .codec_sampling_llava_onevision2 import CodecSample, CodecSamplingConfig, sample_codec_video
from .image_processing_llava_onevision2 import LlavaOnevision2ImageProcessor
from .processing_llava_onevision2 import LlavaOnevision2Processor
from .video_processing_llava_onevision2 import LlavaOnevision2VideoMetadata, LlavaOnevision2VideoProcessor

__all__ = [
    "CodecSample",
    "CodecSamplingConfig",
    "LlavaOnevision2ImageProcessor",
    "LlavaOnevision2Processor",
    "LlavaOnevision2VideoMetadata",
    "LlavaOnevision2VideoProcessor",
    "sample_codec_video",
]
