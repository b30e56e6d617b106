"""Image, video and codec processors for LLaVA-OneVision-2 (`llava_onevision2.processing`).

Files here are shipped as remote code next to checkpoints: they import only each other and transformers,
never `llava_onevision2.modeling`.

The names below load on first use, so importing one module of the package (e.g. the codec sampler, which needs
neither torch nor transformers) does not import the others.
"""

import importlib

EXPORTS = {
    "CodecSample": "codec_sampling_llava_onevision2",
    "CodecSamplingConfig": "codec_sampling_llava_onevision2",
    "sample_codec_video": "codec_sampling_llava_onevision2",
    "LlavaOnevision2ImageProcessor": "image_processing_llava_onevision2",
    "LlavaOnevision2Processor": "processing_llava_onevision2",
    "LlavaOnevision2VideoMetadata": "video_samplers_llava_onevision2",
    "LlavaOnevision2VideoProcessor": "video_processing_llava_onevision2",
    "SampledVideo": "video_samplers_llava_onevision2",
    "VideoSampler": "video_samplers_llava_onevision2",
}


def __getattr__(name: str):
    if name not in EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *EXPORTS])


__all__ = sorted(EXPORTS)
