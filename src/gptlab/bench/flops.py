"""FLOPs per token and the GPU peaks moved to `gptlab.flops`, below training, so the training log can show
MFU; this name stays for code written before the move."""

from gptlab.flops import PEAK_TFLOPS, flops_per_token, lookup_peak_tflops, matmul_parameters  # noqa: F401
