"""Throughput harness: time training steps of a run's real configuration, with the trainer's own step code.

`bench_run` writes the run's resolved config into a temporary run directory, builds it with
`gptlab.train.loop.setup` and times `forward_backward` + `optimizer_step`, the two functions `fit` calls,
so whatever the trainer does (precision, optimizer, fast paths) is what is measured. It reports tokens/s,
ms per step, model FLOPs per token, MFU against the device's datasheet peak, peak memory, and the time
spent in data, forward, backward and optimizer. `compare_speeds` does that once per override;
`find_max_microbatch` finds the largest microbatch that fits by doubling, then bisecting.

    flops.py       model FLOPs per token, the GPUs' datasheet peaks
    memory.py      peak tensor bytes on the CPU, out-of-memory errors, host memory, byte counts
    harness.py     a run built by the trainer's setup in a temporary directory; steps timed by phase
    timing.py      bench_run, compare_speeds, seconds_per_step: the numbers `gptlab bench` prints
    microbatch.py  the largest microbatch that fits
    output.py      the text tables

This package imports no command module; `gptlab.bench_command` is the click command that drives it.
docs/performance.md gives the formulas and how each number is measured.
"""

from gptlab.bench.harness import PHASES, phase_clock, prepared_run, step_peak_memory, train_step
from gptlab.bench.memory import (
    MemoryLimitExceeded,
    TensorBytesTracker,
    available_host_memory,
    format_bytes,
    is_out_of_memory,
    minor_page_faults,
    parse_bytes,
)
from gptlab.bench.microbatch import (
    MAX_MICROBATCH_SEARCHED,
    TRIAL_STEPS,
    Trial,
    find_max_microbatch,
    search_max_microbatch,
    try_microbatch,
)
from gptlab.bench.output import format_bench, format_comparison, format_max_microbatch
from gptlab.bench.timing import RESULT_FIELDS, bench_run, compare_speeds, measure, seconds_per_step
from gptlab.flops import PEAK_TFLOPS, flops_per_token, lookup_peak_tflops, matmul_parameters
from gptlab.train.record import device_name

__all__ = [
    "MAX_MICROBATCH_SEARCHED",
    "PEAK_TFLOPS",
    "PHASES",
    "RESULT_FIELDS",
    "TRIAL_STEPS",
    "MemoryLimitExceeded",
    "TensorBytesTracker",
    "Trial",
    "available_host_memory",
    "bench_run",
    "compare_speeds",
    "device_name",
    "find_max_microbatch",
    "flops_per_token",
    "format_bench",
    "format_bytes",
    "format_comparison",
    "format_max_microbatch",
    "is_out_of_memory",
    "lookup_peak_tflops",
    "matmul_parameters",
    "measure",
    "minor_page_faults",
    "parse_bytes",
    "phase_clock",
    "prepared_run",
    "search_max_microbatch",
    "seconds_per_step",
    "step_peak_memory",
    "train_step",
    "try_microbatch",
]
