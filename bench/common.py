"""Shared pieces of the benchmark scripts (run from the repository root or from bench/)."""

import json
import time
from pathlib import Path

import torch

from llava_onevision2.modeling import LlavaOnevision2Config, LlavaOnevision2ForConditionalGeneration


def emit_report(report: dict, output: str | None, quiet: bool = False) -> None:
    """Print the JSON report (unless `quiet`) and, when asked, write it to `output`."""
    text = json.dumps(report, indent=2)
    if not quiet:
        print(text)
    if output:
        Path(output).write_text(text + "\n")


def add_model_options(parser, attention: bool = True) -> None:
    """The options the model benches share: preset, device, dtype and (unless `attention` is False) the attention
    implementation. They are the arguments of `build_bench_model`."""
    parser.add_argument("--preset", default="tiny", help="tiny, or a LlavaOnevision2Config preset (8b, 4b, ...)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    if attention:
        parser.add_argument("--attn", default="sdpa", help="sdpa, eager or flash_attention_2")


def build_bench_model(preset: str, device: str, dtype: str | None, attn: str):
    """Random weights at a preset's shapes ("tiny" for CPU runs), bf16 on CUDA and fp32 on CPU unless `dtype`."""
    config = LlavaOnevision2Config.from_preset(preset)
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    torch.manual_seed(0)
    with torch.device(device):
        return LlavaOnevision2ForConditionalGeneration._from_config(
            config, dtype=torch_dtype, attn_implementation=attn
        )


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed_training_steps(model, batches, steps: int, device: str = "cpu") -> tuple[float, float]:
    """`steps` AdamW training steps over the iterator `batches` (ready in memory, or a live DataLoader) after one
    warm-up step, each batch moved to `device`. Returns (seconds, seconds spent waiting in `next(batches)`)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(batch):
        moved = {key: value.to(device) if torch.is_tensor(value) else value for key, value in batch.items()}
        model(**moved).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    step(next(batches))
    synchronize(device)
    waiting = 0.0
    start = time.perf_counter()
    for _ in range(steps):
        asked = time.perf_counter()
        batch = next(batches)
        waiting += time.perf_counter() - asked
        step(batch)
    synchronize(device)
    return time.perf_counter() - start, waiting


def best_time_ms(fn, device: str, repeats: int) -> float:
    """Best wall time of `repeats` calls after one warm-up, in milliseconds (CUDA work included)."""
    fn()
    timings = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        timings.append((time.perf_counter() - start) * 1000)
    return round(min(timings), 2)


class StepClock:
    """A logits processor that only notes the time of every decoding step (generate calls it once per token)."""

    def __init__(self, device: str):
        self.device, self.stamps = device, []

    def __call__(self, input_ids, scores):
        synchronize(self.device)
        self.stamps.append(time.perf_counter())
        return scores


def decode_ms_per_token(model, inputs: dict, new_tokens: int, device: str, **generate_options) -> float:
    """Milliseconds per token between the first and the last decoding step of one greedy `generate`: the prefill
    is outside the measurement, so its run-to-run noise cannot leak into the figure."""
    from transformers import LogitsProcessorList

    clock = StepClock(device)
    model.generate(
        **inputs,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        pad_token_id=0,
        eos_token_id=None,
        logits_processor=LogitsProcessorList([clock]),
        **generate_options,
    )
    return (clock.stamps[-1] - clock.stamps[0]) * 1000 / (len(clock.stamps) - 1)
