"""Multimodal processor of LLaVA-OneVision-2: image processor + video processor + Qwen tokenizer + chat template.

Prompt expansion (placeholder counts always come from `merged_token_count` on the grid rows):
- image: `<|vision_start|><|image_pad|><|vision_end|>` -> `<|vision_start|>` + `<|image_pad|>` x k + `<|vision_end|>`;
- video: a bare `<|video_pad|>` (what the chat template writes; the upstream spelling
  `<|vision_start|><|video_pad|><|vision_end|>` in raw text is accepted too) -> one block per frame,
  `<{seconds:.1f} seconds><|vision_start|>` + `<|video_pad|>` x k + `<|vision_end|>`, followed by a newline in the
  training format and nothing in the evaluated format.
A video's blocks come from its sampler's runs (`video_samplers_llava_onevision2`); a sampler that fills image
placeholders (codec) writes `<|image_pad|>` runs, and its rows join the image keys. Images and such videos keep
their order in the prompt; token ids come from the tokenizer.
"""

import re

import numpy as np
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin

from .image_processing_llava_onevision2 import LlavaOnevision2ImagesKwargs
from .video_processing_llava_onevision2 import LlavaOnevision2VideosKwargs, flatten_video_inputs
from .video_samplers_llava_onevision2 import SampledVideo
from .vision_layout_llava_onevision2 import VISUAL_KEYS, join_items, merged_token_count, split_items

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2-VL style: a default system turn, typed content items, assistant turns inside {% generation %} so that
# `return_assistant_tokens_mask=True` marks the answer and its closing <|im_end|> (not the newline after it).
# A video item is a bare <|video_pad|>: its expansion brings a <|vision_start|>/<|vision_end|> pair per frame.
CHAT_TEMPLATE = (
    "{%- macro render(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- else -%}{%- for item in content -%}"
    "{%- if item.type == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif item.type == 'video' -%}{{ '<|video_pad|>' }}"
    "{%- elif item.type == 'text' -%}{{ item.text }}"
    "{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if messages[0].role != 'system' -%}"
    "{{ '<|im_start|>system\\n" + DEFAULT_SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if message.role == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ render(message.content) }}{{ '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else -%}"
    "{{ '<|im_start|>' + message.role + '\\n' }}{{ render(message.content) }}{{ '<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


GENERATION_BLOCK = re.compile(r"\{%-?\s*generation\s*-?%\}")


def marks_assistant_turns(template: str | None) -> bool:
    """Whether a chat template wraps assistant turns in `{% generation %}` (what `return_assistant_tokens_mask`
    needs; released templates usually do not)."""
    return template is not None and GENERATION_BLOCK.search(template) is not None


class LlavaOnevision2ProcessorKwargs(ProcessingKwargs, total=False):
    images_kwargs: LlavaOnevision2ImagesKwargs
    videos_kwargs: LlavaOnevision2VideosKwargs
    _defaults = {
        "text_kwargs": {"padding": False, "return_mm_token_type_ids": False},
        # The prompt needs each video's frame times, so the video processor always returns its metadata.
        "videos_kwargs": {"return_metadata": True},
    }


class LlavaOnevision2Processor(ProcessorMixin):
    r"""
    Wraps [`LlavaOnevision2ImageProcessor`], [`LlavaOnevision2VideoProcessor`] and a Qwen2 tokenizer.

    Call it with `text` holding one image / video placeholder per item (the chat template writes them), `images` and
    `videos`; or use `apply_chat_template(messages, tokenize=True, return_dict=True)` with
    `{"type": "image", "image": ...}` / `{"type": "video", "video": ...}` content items.
    """

    valid_processor_kwargs = LlavaOnevision2ProcessorKwargs
    # Sampled videos travel from `_process_videos` to `__call__` under this key, untouched by tensor conversion.
    skip_tensor_conversion = [*ProcessorMixin.skip_tensor_conversion, "sampled_videos"]

    def __init__(self, image_processor=None, tokenizer=None, video_processor=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.vision_start_token = getattr(tokenizer, "vision_start_token", None) or "<|vision_start|>"
        self.vision_end_token = getattr(tokenizer, "vision_end_token", None) or "<|vision_end|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        self.vision_start_token_id = tokenizer.convert_tokens_to_ids(self.vision_start_token)
        self.vision_end_token_id = tokenizer.convert_tokens_to_ids(self.vision_end_token)
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template or CHAT_TEMPLATE)
        # Upstream prompts wrap each video in vision markers; the expansion brings its own markers per frame. (Raw
        # text only: the chat template writes the bare token, which keeps assistant-mask offsets exact.)
        self._wrapped_video = re.compile(
            re.escape(self.vision_start_token)
            + r"\s*"
            + re.escape(self.video_token)
            + r"\s*"
            + re.escape(self.vision_end_token)
        )
        self._wrapped_video_and_newline = re.compile(self._wrapped_video.pattern + r"\n?")

    def prepare_inputs_layout(self, images=None, text=None, videos=None, audio=None, **kwargs):
        images, text, videos, audio = super().prepare_inputs_layout(images, text, videos, audio, **kwargs)
        if text is not None:
            absorbs = self.video_sampler_class(kwargs).absorbs_newline_after_placeholder
            wrapped = self._wrapped_video_and_newline if absorbs else self._wrapped_video
            text = [wrapped.sub(self.video_token, sample) for sample in text]
        return images, text, videos, audio

    def video_sampler_class(self, call_kwargs: dict):
        """The sampler a call uses: its own `video_backend`, else its videos_kwargs', else the video processor's."""
        videos_kwargs = call_kwargs.get("videos_kwargs") or {}
        backend = (
            call_kwargs.get("video_backend")
            or videos_kwargs.get("video_backend")
            or self.video_processor.video_backend
        )
        return self.video_processor.sampler_class(backend)

    def validate_inputs(self, images=None, text=None, videos=None, audio=None, **kwargs):
        """Videos may be paths, bytes or file objects, which the generic check cannot count; count them here."""
        if text is not None and videos is not None:
            placeholders = sum(sample.count(self.video_token) for sample in text)
            num_videos = len(flatten_video_inputs(videos))
            if placeholders != num_videos:
                raise ValueError(
                    f"The prompts hold {placeholders} {self.video_token} placeholders but {num_videos} videos were passed."
                )
            text = [sample.replace(self.video_token, "") for sample in text]
            videos = None
        super().validate_inputs(images=images, text=text, videos=videos, audio=audio, **kwargs)

    def _process_videos(self, videos, **kwargs):
        sampled = self.video_processor.sample_videos(videos, **kwargs)
        return {"sampled_videos": sampled}, [self.video_prompt(item) for item in sampled]

    def video_prompt(self, item: SampledVideo) -> str:
        """One `<t seconds><|vision_start|>` + placeholder x k + `<|vision_end|>` block per run of the item."""
        token = self.image_token if item.fills == "image" else self.video_token
        return "".join(
            f"<{seconds:.1f} seconds>{self.vision_start_token}{token * tokens}{self.vision_end_token}{item.run_end}"
            for seconds, tokens in item.runs
        )

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        if videos is None:
            return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        # Image-filling videos join the image keys in prompt order, which needs the placement of every placeholder.
        wanted_offsets = kwargs.get("return_text_replacement_offsets")
        outputs = super().__call__(
            images=images,
            text=text,
            videos=videos,
            audio=audio,
            **{**kwargs, "return_text_replacement_offsets": text is not None},
        )
        sampled = outputs.pop("sampled_videos")
        offsets = (
            outputs.get("text_replacement_offsets")
            if wanted_offsets
            else outputs.pop("text_replacement_offsets", None)
        )
        items = in_prompt_order(split_items(outputs, "image"), sampled, offsets)
        for key in (*VISUAL_KEYS["image"], *VISUAL_KEYS["video"]):
            outputs.pop(key, None)
        as_numpy = isinstance(outputs.get("input_ids"), np.ndarray)
        outputs.update(join_items(items, as_numpy=as_numpy))
        if kwargs.get("return_metadata"):
            outputs["video_metadata"] = [item.metadata for item in sampled]
        return outputs

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        merge = self.image_processor.merge_size
        return self.image_token * merged_token_count(image_inputs["image_grid_thw"][image_idx], merge)

    @property
    def model_input_names(self) -> list[str]:
        names = self.tokenizer.model_input_names + self.image_processor.model_input_names
        return list(dict.fromkeys(names + self.video_processor.model_input_names))


def in_prompt_order(images: list, videos: list[SampledVideo], offsets: list | None) -> list:
    """Images and videos in the order their placeholders appear across the batch (images first without a prompt)."""
    if offsets is None:
        return [*images, *videos]
    queues = {"image": iter(images), "video": iter(videos)}
    return [next(queues[placed["type"]]) for sample in offsets for placed in sample if placed["type"] in queues]


__all__ = ["CHAT_TEMPLATE", "LlavaOnevision2Processor", "marks_assistant_turns"]

# Saved folders name this class in `auto_map`, so AutoProcessor loads it with trust_remote_code.
LlavaOnevision2Processor.register_for_auto_class("AutoProcessor")
