"""LLaVA-OneVision-2 configuration and model classes (`llava_onevision2.modeling`).

Files here are shipped as remote code next to checkpoints: they import only each other (`from .x import`),
transformers and torch.
"""

from .configuration_llava_onevision2 import (
    MODEL_AUTO_MAP,
    PRESETS,
    LlavaOnevision2Config,
    LlavaOnevision2VisionConfig,
)
from .modeling_llava_onevision2 import (
    LlavaOnevision2ForConditionalGeneration,
    LlavaOnevision2Model,
    LlavaOnevision2PreTrainedModel,
    LlavaOnevision2VisionModel,
)

__all__ = [
    "MODEL_AUTO_MAP",
    "PRESETS",
    "LlavaOnevision2Config",
    "LlavaOnevision2ForConditionalGeneration",
    "LlavaOnevision2Model",
    "LlavaOnevision2PreTrainedModel",
    "LlavaOnevision2VisionConfig",
    "LlavaOnevision2VisionModel",
]
