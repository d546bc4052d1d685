"""Model FLOPs per token, and the datasheet peaks of the GPUs that MFU is measured against."""

from __future__ import annotations

import re
from typing import Optional

from gptlab.config import ModelConfig
from gptlab.model import parameter_counts


def matmul_parameters(config: ModelConfig) -> int:
    """Weights that take part in a matmul for every token (gptlab.model.parameter_counts says which, with a
    mixture of experts only the router and the active experts); computed from the config, so a head padded for
    speed still counts the real vocabulary: MFU credits only useful work."""
    return parameter_counts(config).matmul


def flops_per_token(config: ModelConfig) -> int:
    """Training FLOPs per token, the PaLM / nanoGPT estimate: 6 x matmul parameters (2 forward, 4 backward)
    + 12 x layers x width x context (attention scores and their weighted sum, forward and backward,
    counted over the full T x T square as the convention has it, although a causal kernel computes half)."""
    return 6 * matmul_parameters(config) + 12 * config.n_layers * config.emb_dim * config.context_length


# --- device peaks ---------------------------------------------------------------------------------

# Dense peak TFLOP/s from the vendors' datasheets (the datasheets' larger figures assume 2:4 sparsity).
# fp16 and bf16: tensor cores accumulating in float32, as autocast uses them; tf32: tensor cores;
# fp32: plain float32 (gptlab's 'fp32' turns TF32 off). First matching pattern wins, so the more
# specific names come first. Matched against torch.cuda.get_device_name().
PEAK_TFLOPS: list[tuple[str, str, dict[str, float]]] = [
    (r"\bH100\b.*\bPCIe\b", "H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    (r"\bH100\b.*\bNVL\b", "H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (r"\bH100\b", "H100 SXM", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    (r"\bH200\b.*\bNVL\b", "H200 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0}),
    (r"\bG?H200\b", "H200 SXM", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.5, "fp32": 67.0}),
    (r"\bA100\b", "A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    (r"\bA10\b", "A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2}),
    (r"\bL40S\b", "L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6}),
    (r"\bL40\b", "L40", {"bf16": 181.0, "fp16": 181.0, "tf32": 90.5, "fp32": 90.5}),
    (r"\bL4\b", "L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3}),
    (r"RTX 4090", "RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6}),
    (r"RTX 3090 Ti", "RTX 3090 Ti", {"bf16": 80.0, "fp16": 80.0, "tf32": 40.0, "fp32": 40.0}),
    (r"RTX 3090", "RTX 3090", {"bf16": 71.0, "fp16": 71.0, "tf32": 35.6, "fp32": 35.6}),
    (r"\bV100\b.*\bPCIE\b", "V100 PCIe", {"fp16": 112.0, "tf32": 14.0, "fp32": 14.0}),  # no bf16 or TF32 units
    (r"\bV100\b", "V100 SXM2", {"fp16": 125.0, "tf32": 15.7, "fp32": 15.7}),
]


def lookup_peak_tflops(device_name: str, precision: str) -> Optional[tuple[float, str]]:
    """(dense peak TFLOP/s, which table row) for a device name and gptlab precision; None when unknown."""
    for pattern, label, peaks in PEAK_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            peak = peaks.get(precision)
            return (peak, f"{label} {precision} dense (datasheet)") if peak is not None else None
    return None
