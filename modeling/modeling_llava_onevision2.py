"""PyTorch LLaVA-OneVision-2: OneVision-Encoder (3-D rotary ViT) + patch merger + Qwen3 language model.

Reads top-down, leaves first: vision attention -> MLP -> encoder layer -> encoder -> merger -> vision model ->
`LlavaOnevision2Model` (all multimodal logic) -> `LlavaOnevision2ForConditionalGeneration` (lm_head and loss).
State-dict keys match the released checkpoints: `model.visual.*`, `model.language_model.*`, `lm_head.weight`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MultimodalBaseModelOutputWithPast,
    MultimodalCausalLMOutputWithPast,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel, slice_logits_to_keep
from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import is_flash_attention_requested, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_llava_onevision2 import MODEL_AUTO_MAP, LlavaOnevision2Config, LlavaOnevision2VisionConfig
from .vision_geometry_llava_onevision2 import (
    AttentionWindows,
    attention_window_lengths,
    block_layout_positions,
    rotate_with_tables,
    vision_rotary_angles,
    vision_rotary_tables,
)

# Keys of visual inputs: (pixels, grid, positions, placeholder-token config attribute) per modality.
VISUAL_INPUT_KEYS = {
    "image": ("pixel_values", "image_grid_thw", "patch_positions", "image_token_id"),
    "video": ("pixel_values_videos", "video_grid_thw", "video_patch_positions", "video_token_id"),
}


@dataclass
class LlavaOnevision2ModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""
    router_logits (`tuple(torch.FloatTensor)`, *optional*):
        Per MoE layer, the router logits `[tokens, num_experts]` (MoE language models with `output_router_logits`).
    """

    router_logits: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class LlavaOnevision2CausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""
    aux_loss (`torch.FloatTensor`, *optional*):
        The Qwen3-MoE load-balancing loss; `loss` includes it times `router_aux_loss_coef` when labels are given.
    router_logits (`tuple(torch.FloatTensor)`, *optional*):
        Per MoE layer, the router logits `[tokens, num_experts]`.
    """

    aux_loss: torch.FloatTensor | None = None
    router_logits: tuple[torch.FloatTensor, ...] | None = None


def is_moe_text_config(text_config) -> bool:
    return getattr(text_config, "num_experts", None) is not None and hasattr(text_config, "router_aux_loss_coef")


# --------------------------------------------------------------------------------------------------------------------
# Input checks: each names the offending argument and the numbers involved.
# --------------------------------------------------------------------------------------------------------------------


def check_visual_inputs(
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor | None,
    config: LlavaOnevision2VisionConfig,
    names: tuple[str, str] = ("pixel_values", "image_grid_thw"),
) -> None:
    """Raise a `ValueError` unless pixel rows and grid rows describe the same patches."""
    pixel_name, grid_name = names
    row_width = config.num_channels * config.patch_size**2
    if pixel_values.ndim != 2 or pixel_values.shape[1] != row_width:
        raise ValueError(
            f"`{pixel_name}` must be 2-D [num_patches, channels*patch*patch] = [N, {row_width}] in block layout, "
            f"got shape {tuple(pixel_values.shape)}."
        )
    if grid_thw is None:
        raise ValueError(f"`{grid_name}` is required with `{pixel_name}`.")
    if grid_thw.ndim != 2 or grid_thw.shape[1] != 3:
        raise ValueError(f"`{grid_name}` must have shape [num_rows, 3] (t, h, w), got {tuple(grid_thw.shape)}.")
    s = config.spatial_merge_size
    if bool(((grid_thw[:, 1:] % s) != 0).any()):
        raise ValueError(
            f"`{grid_name}` heights and widths must be multiples of spatial_merge_size={s}: {grid_thw.tolist()}."
        )
    described = int(grid_thw.prod(-1).sum())
    if described != pixel_values.shape[0]:
        raise ValueError(
            f"`{pixel_name}` has {pixel_values.shape[0]} rows but `{grid_name}` describes {described} patches "
            f"(rows t*h*w: {grid_thw.prod(-1).tolist()})."
        )


def resolve_patch_positions(
    patch_positions: torch.Tensor | None,
    grid_thw: torch.Tensor,
    num_patches: int,
    spatial_merge_size: int,
    name: str = "patch_positions",
) -> torch.Tensor:
    """The (t, h, w) of every pixel row: the given ones, checked, or block-layout positions derived from the grid."""
    if patch_positions is None:
        return block_layout_positions(grid_thw, spatial_merge_size)
    if patch_positions.ndim == 3 and patch_positions.shape[0] == 1:
        patch_positions = patch_positions[0]
    if patch_positions.ndim != 2 or patch_positions.shape[1] != 3:
        raise ValueError(f"`{name}` must have shape [num_patches, 3] (t, h, w), got {tuple(patch_positions.shape)}.")
    if patch_positions.shape[0] != num_patches:
        raise ValueError(f"`{name}` has {patch_positions.shape[0]} rows but there are {num_patches} patches.")
    return patch_positions


# --------------------------------------------------------------------------------------------------------------------
# Vision tower
# --------------------------------------------------------------------------------------------------------------------


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention on `[batch, heads, length, head_dim]`, softmax in float32; returns `[batch, length, heads, d]`."""
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class LlavaOnevision2VisionAttention(nn.Module):
    """Bidirectional self-attention inside windows, with the 3-D rotary embedding on queries and keys."""

    def __init__(self, config: LlavaOnevision2VisionConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = False
        self.num_key_value_groups = 1  # read by the library attention functions
        # Fused projection: output rows are [q (all heads); k; v], each head-major.
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self,
        hidden_states: torch.Tensor,
        windows: AttentionWindows,
        rotary_cos: torch.Tensor,
        rotary_signed_sin: torch.Tensor,
        **kwargs,
    ) -> torch.Tensor:
        num_patches = hidden_states.shape[0]
        qkv = self.qkv(hidden_states).view(num_patches, 3, self.num_heads, self.head_dim)
        # Queries and keys rotate together: one pass over both instead of one each.
        query, key = rotate_with_tables(qkv[:, :2], rotary_cos, rotary_signed_sin).unbind(1)
        value = qkv[:, 2]

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        dropout = self.attention_dropout if self.training else 0.0
        if is_flash_attention_requested(self.config):
            output = self._attend_varlen(attention_interface, query, key, value, windows, dropout)
        else:
            output = self._attend_batched_windows(attention_interface, query, key, value, windows, dropout)
        return self.proj(output.reshape(num_patches, -1))

    def _attend_varlen(self, attention_interface, query, key, value, windows, dropout) -> torch.Tensor:
        """One variable-length kernel call over all windows (flash attention)."""
        as_batch = [x.transpose(0, 1).unsqueeze(0) for x in (query, key, value)]  # [1, heads, N, d]
        output, _ = attention_interface(
            self,
            *as_batch,
            attention_mask=None,
            scaling=self.scaling,
            dropout=dropout,
            cu_seq_lens_q=windows.cu_seqlens,
            cu_seq_lens_k=windows.cu_seqlens,
            max_length_q=windows.max_length,
            max_length_k=windows.max_length,
            is_causal=False,
        )
        return output[0]  # [N, heads, d]

    def _attend_batched_windows(self, attention_interface, query, key, value, windows, dropout) -> torch.Tensor:
        """One attention call per distinct window length, the windows of that length stacked as a batch.

        Memory follows the sum of squared window lengths, never the square of the whole sequence.
        """
        group_outputs = []
        for length, index in windows.groups:
            if index is None:  # one length tiles the sequence: a view, no copy
                batched = [x.view(-1, length, self.num_heads, self.head_dim) for x in (query, key, value)]
            else:
                batched = [x[index] for x in (query, key, value)]  # [windows, length, heads, d]
            output, _ = attention_interface(
                self,
                *(x.transpose(1, 2) for x in batched),
                attention_mask=None,
                scaling=self.scaling,
                dropout=dropout,
                is_causal=False,
            )
            if index is None:
                return output.reshape(query.shape)
            group_outputs.append(output.reshape(-1, self.num_heads, self.head_dim))
        return torch.cat(group_outputs)[windows.restore_order]


class LlavaOnevision2VisionMLP(nn.Module):
    def __init__(self, config: LlavaOnevision2VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


def make_vision_norm(config: LlavaOnevision2VisionConfig) -> nn.Module:
    if config.layer_norm_type == "rms_norm":
        return nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
    return nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class LlavaOnevision2VisionEncoderLayer(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: LlavaOnevision2VisionConfig):
        super().__init__()
        self.layer_norm1 = make_vision_norm(config)
        self.self_attn = LlavaOnevision2VisionAttention(config)
        self.layer_norm2 = make_vision_norm(config)
        self.mlp = LlavaOnevision2VisionMLP(config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        windows: AttentionWindows,
        rotary_cos: torch.Tensor,
        rotary_signed_sin: torch.Tensor,
        **kwargs,
    ) -> torch.Tensor:
        hidden_states = hidden_states + self.self_attn(
            self.layer_norm1(hidden_states),
            windows=windows,
            rotary_cos=rotary_cos,
            rotary_signed_sin=rotary_signed_sin,
        )
        return hidden_states + self.mlp(self.layer_norm2(hidden_states))


class LlavaOnevision2VisionEncoder(nn.Module):
    def __init__(self, config: LlavaOnevision2VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(
            [LlavaOnevision2VisionEncoderLayer(config) for _ in range(config.num_hidden_layers)]
        )

    def forward(self, hidden_states, windows, rotary_cos, rotary_signed_sin) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, windows=windows, rotary_cos=rotary_cos, rotary_signed_sin=rotary_signed_sin
            )
        return hidden_states


class LlavaOnevision2VisionEmbeddings(nn.Module):
    """Patch embedding: a bias-free convolution whose kernel equals its stride, applied as one matrix product."""

    def __init__(self, config: LlavaOnevision2VisionConfig):
        super().__init__()
        self.patch_embedding = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            bias=False,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Each row is one (C, P, P) patch, so the convolution is a dot product with the flattened kernel.
        weight = self.patch_embedding.weight
        return nn.functional.linear(pixel_values.to(weight.dtype), weight.view(weight.shape[0], -1))


class LlavaOnevision2PatchMerger(nn.Module):
    """LayerNorm per patch, then each s*s block of consecutive rows (block layout) -> one language-model token."""

    def __init__(self, config: LlavaOnevision2VisionConfig):
        super().__init__()
        self.input_size = config.hidden_size * config.spatial_merge_size**2
        self.ln_q = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(self.input_size, self.input_size),
            nn.GELU(),
            nn.Linear(self.input_size, config.out_hidden_size),
        )

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.ln_q(hidden_states).view(-1, self.input_size))


# --------------------------------------------------------------------------------------------------------------------
# Pre-trained model base and the vision model
# --------------------------------------------------------------------------------------------------------------------


class LlavaOnevision2PreTrainedModel(PreTrainedModel):
    config: LlavaOnevision2Config
    base_model_prefix = "model"
    input_modalities = ("image", "video", "text")
    supports_gradient_checkpointing = True
    # The language model's decoder layer class is added from the text model itself (dense or MoE).
    _no_split_modules = ["LlavaOnevision2VisionEncoderLayer"]
    _skip_keys_device_placement = ["cache"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # Text-only decoding steps (what generate compiles with a static cache) trace as one graph; the vision tower's
    # window grouping is data dependent and runs eagerly in the prefill.
    _can_compile_fullgraph = True


class LlavaOnevision2VisionModel(LlavaOnevision2PreTrainedModel):
    """OneVision-Encoder + merger. Returns patch features (`last_hidden_state`) and merged tokens (`pooler_output`)."""

    config: LlavaOnevision2VisionConfig
    input_modalities = ("image", "video")
    main_input_name = "pixel_values"
    _can_record_outputs = {"hidden_states": LlavaOnevision2VisionEncoderLayer}

    def __init__(self, config: LlavaOnevision2VisionConfig):
        super().__init__(config)
        config.validate_architecture()
        self.embeddings = LlavaOnevision2VisionEmbeddings(config)
        self.layernorm_pre = make_vision_norm(config)
        self.encoder = LlavaOnevision2VisionEncoder(config)
        self.merger = LlavaOnevision2PatchMerger(config)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        pixel_values: torch.Tensor,
        grid_thw: torch.Tensor,
        patch_positions: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.Tensor` of shape `(num_patches, channels * patch_size**2)`):
            Patches of all images / frames / canvases, each grid row in block layout.
        grid_thw (`torch.LongTensor` of shape `(num_rows, 3)`):
            (t, h, w) of each grid row, in patches. Frames of one row share attention windows of
            `frame_windows_size` frames.
        patch_positions (`torch.LongTensor` of shape `(num_patches, 3)`, *optional*):
            (t, h, w) rotary position of every row of `pixel_values`. Derived from `grid_thw` when omitted
            (t = frame index inside its row, block layout).
        """
        check_visual_inputs(pixel_values, grid_thw, self.config)
        positions = resolve_patch_positions(
            patch_positions, grid_thw, pixel_values.shape[0], self.config.spatial_merge_size
        ).to(pixel_values.device)
        windows = AttentionWindows.from_lengths(
            attention_window_lengths(grid_thw, self.config.frame_windows_size), device=pixel_values.device
        )
        angles = vision_rotary_angles(
            positions, self.config.hidden_size // self.config.num_attention_heads, self.config.rope_theta
        )

        hidden_states = self.layernorm_pre(self.embeddings(pixel_values))
        hidden_states = self.encoder(hidden_states, windows, *vision_rotary_tables(angles))
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=self.merger(hidden_states))


# --------------------------------------------------------------------------------------------------------------------
# Vision-language model
# --------------------------------------------------------------------------------------------------------------------


def text_position_ids(
    attention_mask: torch.Tensor | None, past_length: int, batch_size: int, seq_length: int, device: torch.device
) -> torch.LongTensor:
    """Plain 1-D positions of the new tokens: count of attended tokens before each one (left padding safe).

    `attention_mask` may cover the cached and the new tokens (the generate convention) or only the new ones.
    """
    if attention_mask is None or attention_mask.ndim != 2:
        return torch.arange(past_length, past_length + seq_length, device=device).expand(batch_size, -1)
    positions = attention_mask.long().cumsum(-1) - 1
    positions = positions.masked_fill(attention_mask == 0, 0)
    if attention_mask.shape[1] == past_length + seq_length:
        return positions[:, -seq_length:]
    if attention_mask.shape[1] == seq_length:
        return positions + past_length
    raise ValueError(
        f"attention_mask has {attention_mask.shape[1]} columns; expected {past_length + seq_length} (cached + new "
        f"tokens) or {seq_length} (new tokens only)."
    )


class LlavaOnevision2Model(LlavaOnevision2PreTrainedModel):
    """Vision tower + language model. Encodes images and videos, writes their features over the placeholder tokens,
    and runs the language model with plain 1-D positions (temporal order reaches it only through text timestamps)."""

    # Loading a full checkpoint into the base model (AutoModel) leaves the head unused; that is expected.
    _keys_to_ignore_on_load_unexpected = [r"^lm_head\."]

    def __init__(self, config: LlavaOnevision2Config):
        super().__init__(config)
        self.visual = LlavaOnevision2VisionModel._from_config(config.vision_config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def _encode_visual(self, pixel_values, grid_thw, positions, modality: str, **kwargs) -> BaseModelOutputWithPooling:
        pixel_name, grid_name, positions_name, _ = VISUAL_INPUT_KEYS[modality]
        check_visual_inputs(pixel_values, grid_thw, self.config.vision_config, names=(pixel_name, grid_name))
        positions = resolve_patch_positions(
            positions, grid_thw, pixel_values.shape[0], self.config.vision_config.spatial_merge_size, positions_name
        )
        kwargs["return_dict"] = True
        outputs = self.visual(pixel_values, grid_thw=grid_thw, patch_positions=positions, **kwargs)
        tokens_per_row = grid_thw.prod(-1) // self.config.vision_config.spatial_merge_size**2
        outputs.pooler_output = torch.split(outputs.pooler_output, tokens_per_row.tolist())
        return outputs

    def _encode_visual_together(self, pending: dict, **kwargs) -> dict[str, BaseModelOutputWithPooling]:
        """Images and videos of a batch through the tower in one call (the same collectives on every rank under
        FSDP, one launch instead of two); the features are split back per modality and grid row."""
        if len(pending) == 1:
            ((modality, (pixels, grid, positions)),) = pending.items()
            return {modality: self._encode_visual(pixels, grid, positions, modality, **kwargs)}
        merge = self.config.vision_config.spatial_merge_size
        pixels, grids, positions = [], [], []
        for modality, (modality_pixels, grid, modality_positions) in pending.items():
            pixel_name, grid_name, positions_name, _ = VISUAL_INPUT_KEYS[modality]
            check_visual_inputs(modality_pixels, grid, self.config.vision_config, names=(pixel_name, grid_name))
            positions.append(
                resolve_patch_positions(modality_positions, grid, modality_pixels.shape[0], merge, positions_name)
            )
            pixels.append(modality_pixels)
            grids.append(grid)
        together = self._encode_visual(torch.cat(pixels), torch.cat(grids), torch.cat(positions), "image", **kwargs)
        outputs, start = {}, 0
        for modality, grid in zip(pending, grids):
            outputs[modality] = BaseModelOutputWithPooling(
                pooler_output=together.pooler_output[start : start + len(grid)]
            )
            start += len(grid)
        return outputs

    def _ranks_must_run_the_tower(self) -> bool:
        """Sharded or replicated training needs every rank to run the vision tower every step, text-only or not."""
        return (
            self.training
            and torch.distributed.is_available()
            and torch.distributed.is_initialized()
            and (torch.distributed.get_world_size() > 1)
        )

    def _tower_keepalive(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Zero contribution of one blank merge block through the tower (keeps FSDP / DDP collectives in step)."""
        vision = self.config.vision_config
        merge = vision.spatial_merge_size
        blank = inputs_embeds.new_zeros(merge * merge, vision.num_channels * vision.patch_size**2)
        grid = torch.tensor([[1, merge, merge]], device=inputs_embeds.device)
        features = self.visual(blank, grid_thw=grid, return_dict=True).pooler_output
        return features.sum().to(inputs_embeds.dtype) * 0.0

    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        patch_positions: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Encode images (or frames / codec canvases sent as images). `pooler_output` is a tuple with one
        `(t*h*w / s**2, text_hidden)` tensor per grid row."""
        return self._encode_visual(pixel_values, image_grid_thw, patch_positions, "image", **kwargs)

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_grid_thw: torch.LongTensor,
        video_patch_positions: torch.LongTensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Encode videos; same contract as `get_image_features` for the `<|video_pad|>` tokens."""
        return self._encode_visual(pixel_values_videos, video_grid_thw, video_patch_positions, "video", **kwargs)

    def get_placeholder_mask(
        self,
        input_ids: torch.LongTensor | None,
        inputs_embeds: torch.Tensor,
        modality: str,
        num_features: int,
        feature_size: int | None = None,
    ) -> torch.Tensor:
        """Boolean `[batch, seq, 1]` mask of the placeholder tokens of `modality`, checked against the feature count
        and, when given, the feature width against the text hidden size."""
        hidden_size = inputs_embeds.shape[-1]
        if feature_size is not None and feature_size != hidden_size:
            raise ValueError(
                f"{modality.capitalize()} features are {feature_size} wide but the language model's hidden size is "
                f"{hidden_size}: the merger's out_hidden_size must equal text_config.hidden_size."
            )
        token_id = getattr(self.config, VISUAL_INPUT_KEYS[modality][3])
        if input_ids is None:
            token_embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
            mask = (inputs_embeds == token_embedding).all(-1)
        else:
            mask = input_ids == token_id
        num_tokens = int(mask.sum())
        if num_tokens != num_features:
            raise ValueError(
                f"{modality.capitalize()} features and {modality} tokens do not match: the prompt holds {num_tokens} "
                f"{modality} placeholder tokens (id {token_id}) but the {modality} inputs produce {num_features} "
                "features. Expand each placeholder with the processor (one token per merged patch) and do not "
                "truncate prompts through vision tokens."
            )
        return mask.unsqueeze(-1)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        patch_positions: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        video_patch_positions: torch.LongTensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        **kwargs,
    ) -> LlavaOnevision2ModelOutputWithPast:
        r"""
        pixel_values / image_grid_thw / patch_positions:
            Images (and frames or codec canvases sent as images): block-layout pixel rows `[N, C*P*P]`, grid rows
            `[n, 3]` and optional (t, h, w) positions `[N, 3]`. Their features replace `<|image_pad|>` tokens in order.
        pixel_values_videos / video_grid_thw / video_patch_positions:
            The same for videos, replacing `<|video_pad|>` tokens in order.
        mm_encoder_outputs (`dict`, *optional*):
            Pre-computed `get_image_features` / `get_video_features` outputs under "image" / "video" (used by
            `generate` to encode once before expanding for beams).
        output_router_logits (`bool`, *optional*):
            MoE language models only: return each layer's router logits (defaults to `text_config.output_router_logits`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of `input_ids` or `inputs_embeds`.")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        encoded = dict(mm_encoder_outputs or {})
        visual_inputs = {
            "image": (pixel_values, image_grid_thw, patch_positions),
            "video": (pixel_values_videos, video_grid_thw, video_patch_positions),
        }
        pending = {}
        for modality, (pixels, grid, positions) in visual_inputs.items():
            if pixels is None:
                continue
            if encoded.get(modality) is not None:
                raise ValueError(f"Pass either {modality} pixels or pre-computed {modality} features, not both.")
            pending[modality] = (pixels, grid, positions)
        if pending:
            encoded.update(self._encode_visual_together(pending, **kwargs))
        elif not encoded and self._ranks_must_run_the_tower():
            inputs_embeds = inputs_embeds + self._tower_keepalive(inputs_embeds)

        for modality in ("image", "video"):
            if encoded.get(modality) is None:
                continue
            features = torch.cat(list(encoded[modality].pooler_output)).to(inputs_embeds.device, inputs_embeds.dtype)
            mask = self.get_placeholder_mask(input_ids, inputs_embeds, modality, *features.shape)
            inputs_embeds = inputs_embeds.masked_scatter(mask, features)

        if position_ids is None:
            past_length = cache.get_seq_length() if cache is not None else 0
            batch_size, seq_length = inputs_embeds.shape[:2]
            position_ids = text_position_ids(attention_mask, past_length, batch_size, seq_length, inputs_embeds.device)

        if is_moe_text_config(self.config.text_config):
            kwargs["output_router_logits"] = (
                output_router_logits
                if output_router_logits is not None
                else self.config.text_config.output_router_logits
            )
        elif output_router_logits:
            raise ValueError("output_router_logits needs a mixture-of-experts language model (qwen3_moe).")
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        return LlavaOnevision2ModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=encoded.get("image"),
            video_outputs=encoded.get("video"),
            router_logits=getattr(outputs, "router_logits", None),
        )


class LlavaOnevision2ForConditionalGeneration(LlavaOnevision2PreTrainedModel, GenerationMixin):
    """`LlavaOnevision2Model` plus the language-model head and the causal-LM loss."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    # Loss kwargs (`num_items_in_batch`) reach the loss, so gradient accumulation weights every token equally.
    accepts_loss_kwargs = True

    def __init__(self, config: LlavaOnevision2Config):
        super().__init__(config)
        self.model = LlavaOnevision2Model(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def save_pretrained(self, save_directory, *args, **kwargs):
        # A class registers for one auto class only; name the base model too, so AutoModel loads the folder as well.
        self.config.auto_map = {**MODEL_AUTO_MAP, **(getattr(self.config, "auto_map", None) or {})}
        return super().save_pretrained(save_directory, *args, **kwargs)

    def get_image_features(self, pixel_values, image_grid_thw, patch_positions=None, **kwargs):
        return self.model.get_image_features(pixel_values, image_grid_thw, patch_positions, **kwargs)

    def get_video_features(self, pixel_values_videos, video_grid_thw, video_patch_positions=None, **kwargs):
        return self.model.get_video_features(pixel_values_videos, video_grid_thw, video_patch_positions, **kwargs)

    @can_return_tuple
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        patch_positions: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        video_patch_positions: torch.LongTensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        use_cache: bool | None = None,
        output_router_logits: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> LlavaOnevision2CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Next-token targets aligned with `input_ids` (shifted inside the loss); -100 is ignored.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Compute logits only for the last `n` positions (or the given indices); 0 keeps all.

        The other arguments are those of `LlavaOnevision2Model.forward`.
        """
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            image_grid_thw=image_grid_thw,
            patch_positions=patch_positions,
            pixel_values_videos=pixel_values_videos,
            video_grid_thw=video_grid_thw,
            video_patch_positions=video_patch_positions,
            mm_encoder_outputs=mm_encoder_outputs,
            use_cache=use_cache,
            output_router_logits=output_router_logits,
            **kwargs,
        )
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        aux_loss = None
        if outputs.router_logits:
            # Qwen3-MoE's load-balancing loss, weighted as in Qwen3MoeForCausalLM and the released MoE recipe.
            text_config = self.config.text_config
            aux_loss = load_balancing_loss_func(
                outputs.router_logits, text_config.num_experts, text_config.num_experts_per_tok, attention_mask
            )
            if loss is not None:
                loss = loss + text_config.router_aux_loss_coef * aux_loss.to(loss.device)
        return LlavaOnevision2CausalLMOutputWithPast(
            loss=loss,
            aux_loss=aux_loss,
            router_logits=outputs.router_logits,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=outputs.image_outputs,
            video_outputs=outputs.video_outputs,
        )


__all__ = [
    "LlavaOnevision2CausalLMOutputWithPast",
    "LlavaOnevision2ForConditionalGeneration",
    "LlavaOnevision2ModelOutputWithPast",
    "LlavaOnevision2Model",
    "LlavaOnevision2PreTrainedModel",
    "LlavaOnevision2VisionModel",
]

# Saved folders carry `auto_map` and these files, so AutoConfig / AutoModel / AutoModelForImageTextToText load them
# with trust_remote_code (the configuration registers itself in its own module).
LlavaOnevision2Model.register_for_auto_class("AutoModel")
LlavaOnevision2ForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
