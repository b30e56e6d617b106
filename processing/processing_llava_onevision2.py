"""Multimodal processor of LLaVA-OneVision-2: image processor + video processor + Qwen tokenizer + chat template.

Prompt expansion (placeholder counts always come from `merged_token_count` on the grid rows):
- image: `<|vision_start|><|image_pad|><|vision_end|>` -> `<|vision_start|>` + `<|image_pad|>` x k + `<|vision_end|>`;
- video: a bare `<|video_pad|>` (what the chat template writes; the upstream spelling
  `<|vision_start|><|video_pad|><|vision_end|>` in raw text is accepted too) -> one block per frame,
  `<{seconds:.1f} seconds><|vision_start|>` + `<|video_pad|>` x k + `<|vision_end|>`, followed by a newline in the
  training format and nothing in the evaluated format.
Images and videos keep their order in the prompt; token ids come from the tokenizer.
"""

import re

import numpy as np
import torch
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin

from .image_processing_llava_onevision2 import LlavaOnevision2ImagesKwargs
from .video_processing_llava_onevision2 import LlavaOnevision2VideosKwargs, flatten_video_inputs
from .vision_layout_llava_onevision2 import merged_token_count

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
            # Codec runs each end with a newline, which replaces the one after the placeholder (as released).
            wrapped = self._wrapped_video_and_newline if self.video_backend(kwargs) == "codec" else self._wrapped_video
            text = [wrapped.sub(self.video_token, sample) for sample in text]
        return images, text, videos, audio

    def video_backend(self, call_kwargs: dict) -> str:
        """The video backend a call uses: its own argument, else its videos_kwargs, else the video processor's."""
        videos_kwargs = call_kwargs.get("videos_kwargs") or {}
        return (
            call_kwargs.get("video_backend")
            or videos_kwargs.get("video_backend")
            or self.video_processor.video_backend
        )

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
        # The expansion reads each video's frame times and grid rows from its metadata.
        processed = self.video_processor(videos, **{**kwargs, "return_metadata": True})
        replacements = [
            self.replace_video_token(processed, video_idx=i) for i in range(len(processed["video_metadata"]))
        ]
        return processed, replacements

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs):
        if videos is None or text is None:
            return super().__call__(images=images, text=text, videos=videos, audio=audio, **kwargs)
        # Codec videos are written as image runs (the released contract); their rows join the image keys in prompt
        # order, which needs the placement of every expanded placeholder and each video's metadata.
        wanted = {key: kwargs.get(key) for key in ("return_text_replacement_offsets", "return_metadata")}
        outputs = super().__call__(
            images=images,
            text=text,
            videos=videos,
            audio=audio,
            **{**kwargs, "return_text_replacement_offsets": True, "return_metadata": True},
        )
        outputs = self._codec_videos_as_images(outputs)
        if not wanted["return_text_replacement_offsets"]:
            outputs.pop("text_replacement_offsets", None)
        if not wanted["return_metadata"]:
            outputs.pop("video_metadata", None)
        return outputs

    def _codec_videos_as_images(self, outputs):
        """Move codec videos from the video keys into the image keys, interleaved with images in prompt order."""
        metadata = outputs.get("video_metadata") or []
        if not any(m.video_format == "codec" for m in metadata):
            return outputs
        image_parts = split_visual_rows(
            outputs, "pixel_values", "image_grid_thw", "patch_positions", rows_per_item=None
        )
        video_parts = split_visual_rows(
            outputs, "pixel_values_videos", "video_grid_thw", "video_patch_positions", [m.grid_rows for m in metadata]
        )
        images, videos = iter(image_parts), iter(zip(video_parts, metadata))
        as_images, still_videos = [], []
        for sample in outputs["text_replacement_offsets"]:
            for item in sample:
                if item["type"] == "image":
                    as_images.append(next(images))
                elif item["type"] == "video":
                    part, meta = next(videos)
                    if meta.video_format == "codec":
                        as_images.append(part)
                    else:
                        still_videos.append(part)
        join_visual_rows(outputs, as_images, "pixel_values", "image_grid_thw", "patch_positions")
        join_visual_rows(outputs, still_videos, "pixel_values_videos", "video_grid_thw", "video_patch_positions")
        return outputs

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        merge = self.image_processor.merge_size
        return self.image_token * merged_token_count(image_inputs["image_grid_thw"][image_idx], merge)

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        metadata = video_inputs["video_metadata"]
        if metadata[video_idx].video_format == "codec":
            return self.codec_prompt(metadata[video_idx].codec_runs)
        first_row = sum(m.grid_rows for m in metadata[:video_idx])
        rows = video_inputs["video_grid_thw"][first_row : first_row + metadata[video_idx].grid_rows]
        merge = self.video_processor.merge_size
        tokens_per_frame = [merged_token_count((1, h, w), merge) for t, h, w in rows.tolist() for _ in range(t)]
        timestamps = metadata[video_idx].timestamps
        separator = "\n" if metadata[video_idx].video_format == "training" else ""
        return "".join(
            f"<{seconds:.1f} seconds>{self.vision_start_token}{self.video_token * tokens}{self.vision_end_token}"
            + separator
            for seconds, tokens in zip(timestamps, tokens_per_frame, strict=True)
        )

    def codec_prompt(self, runs: list[tuple[float, int]]) -> str:
        """One `<t seconds><|vision_start|><|image_pad|> x k<|vision_end|>` line per run of blocks from one frame."""
        return "".join(
            f"<{seconds:.1f} seconds>{self.vision_start_token}{self.image_token * tokens}{self.vision_end_token}\n"
            for seconds, tokens in runs
        )

    @property
    def model_input_names(self) -> list[str]:
        names = self.tokenizer.model_input_names + self.image_processor.model_input_names
        return list(dict.fromkeys(names + self.video_processor.model_input_names))


def split_visual_rows(outputs, pixel_key: str, grid_key: str, positions_key: str, rows_per_item: list[int] | None):
    """Per item (image or video): its (pixels, grid rows, positions); one grid row per item unless given."""
    if pixel_key not in outputs:
        return []
    grids = outputs[grid_key]
    rows_per_item = rows_per_item or [1] * len(grids)
    parts, grid_start, pixel_start = [], 0, 0
    for count in rows_per_item:
        item_grids = grids[grid_start : grid_start + count]
        patches = int(item_grids.prod(-1).sum())
        parts.append(
            (
                outputs[pixel_key][pixel_start : pixel_start + patches],
                item_grids,
                outputs[positions_key][pixel_start : pixel_start + patches],
            )
        )
        grid_start, pixel_start = grid_start + count, pixel_start + patches
    return parts


def join_visual_rows(outputs, parts, pixel_key: str, grid_key: str, positions_key: str) -> None:
    """Write `parts` back under the three keys (or remove the keys when there are none)."""
    if not parts:
        for key in (pixel_key, grid_key, positions_key):
            outputs.pop(key, None)
        return
    for index, key in enumerate((pixel_key, grid_key, positions_key)):
        joined = torch.cat([torch.as_tensor(part[index]) for part in parts])
        # Keep the container type the caller asked for (`return_tensors="np"` gives numpy arrays).
        outputs[key] = joined.numpy() if isinstance(parts[0][index], np.ndarray) else joined


__all__ = ["CHAT_TEMPLATE", "LlavaOnevision2Processor", "marks_assistant_turns"]

# Saved folders name this class in `auto_map`, so AutoProcessor loads it with trust_remote_code.
LlavaOnevision2Processor.register_for_auto_class("AutoProcessor")
