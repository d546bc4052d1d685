"""The CPU matmul kernel choice (gptlab.cpu_kernels): oneDNN's path computes what torch's does, forward and
backward, and is taken only where it was chosen and the tensors suit it."""

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_MODEL

from gptlab import cpu_kernels
from gptlab.config import ModelConfig
from gptlab.cpu_kernels import ONEDNN, ONEDNN_FP32, TORCH, choose_cpu_matmul, linear, using_cpu_matmul
from gptlab.model import GPT

needs_onednn = pytest.mark.skipif(not cpu_kernels.onednn_linear_available(), reason="this torch has no oneDNN linear")


@pytest.fixture
def onednn_calls(monkeypatch):
    """Counts the oneDNN inner products run (forward and backward)."""
    calls = []
    original = cpu_kernels.onednn_linear
    monkeypatch.setattr(cpu_kernels, "onednn_linear", lambda *args: calls.append(1) or original(*args))
    return calls


def _loss_logits_and_gradients(model: GPT, kernel: str, bf16: bool):
    token_ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(1))
    model.zero_grad(set_to_none=True)
    with using_cpu_matmul(kernel), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = model(token_ids[:, :-1], token_ids[:, 1:])
        loss.backward()
        with torch.no_grad():
            logits = model(token_ids[:, :-1])
    return loss.detach(), logits.float(), {name: p.grad.clone() for name, p in model.named_parameters()}


@needs_onednn
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fused_loss", [False, True], ids=["plain-loss", "chunked-loss"])
def test_the_onednn_path_matches_torch_matmuls_in_outputs_and_every_gradient(onednn_calls, bf16, fused_loss):
    if bf16 and choose_cpu_matmul()[0] != ONEDNN:
        pytest.skip("oneDNN's bf16 inner product needs a CPU with native bf16")
    torch.manual_seed(0)
    # every bias in play; a small vocabulary keeps the test quick
    model = GPT(ModelConfig(**{**TINY_MODEL, "qkv_bias": True, "vocab_size": 1000}), fused_loss=fused_loss)
    model.init_gpt2()
    plain = _loss_logits_and_gradients(model, TORCH, bf16)
    assert onednn_calls == []
    fast = _loss_logits_and_gradients(model, ONEDNN, bf16)
    # per block 4 linears forward + 2 or 3 backward each (no input gradient needed of the first), and the head
    assert len(onednn_calls) >= 2 * 4 * 3
    # bf16: the same bf16 operands, but oneDNN and torch's bf16 GEMM may sum in different orders
    tolerance = dict(rtol=2e-2, atol=2e-3) if bf16 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[0], plain[0], **tolerance)
    torch.testing.assert_close(fast[1], plain[1], **tolerance)
    for name, grad in plain[2].items():
        if bf16:  # single elements may round differently: compare over the whole tensor
            assert float((fast[2][name] - grad).norm() / grad.norm().clamp_min(1e-12)) < 2e-2, name
        else:
            torch.testing.assert_close(fast[2][name], grad, **tolerance, msg=name)


def test_the_kernel_is_chosen_by_cpu_flags(tmp_path):
    def cpuinfo(flags: str):
        path = tmp_path / f"cpuinfo-{len(list(tmp_path.iterdir()))}"
        path.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\n")
        return path

    avx512 = "fpu avx2 avx512f avx512dq avx512bw avx512vl"
    assert choose_cpu_matmul(cpuinfo(avx512 + " avx512_bf16"), available=True, isa_limit="")[0] == ONEDNN
    assert choose_cpu_matmul(cpuinfo(avx512 + " amx_bf16"), available=True, isa_limit="ALL")[0] == ONEDNN
    # AVX-512 without native bf16 (Skylake to Ice Lake): oneDNN has no bf16 inner product there
    kernel, reason = choose_cpu_matmul(cpuinfo(avx512), available=True, isa_limit="")
    assert kernel == ONEDNN_FP32 and "bf16 stays on torch's matmul" in reason and "this CPU lacks" in reason
    kernel, reason = choose_cpu_matmul(cpuinfo("fpu avx2 fma"), available=True, isa_limit="")
    assert kernel == TORCH and "AVX-512" in reason
    assert choose_cpu_matmul(cpuinfo("avx2 avx512f avx512cd"), available=True, isa_limit="")[0] == TORCH  # Xeon Phi
    assert choose_cpu_matmul(cpuinfo(avx512), available=False, isa_limit="")[0] == TORCH  # a torch without oneDNN
    assert choose_cpu_matmul(tmp_path / "missing", available=True, isa_limit="")[0] == TORCH  # macOS, Windows
    # oneDNN held below AVX-512, or below its bf16 level, by ONEDNN_MAX_CPU_ISA
    kernel, reason = choose_cpu_matmul(cpuinfo(avx512 + " avx512_bf16"), available=True, isa_limit="avx2")
    assert kernel == TORCH and "ONEDNN_MAX_CPU_ISA=AVX2" in reason
    assert (
        choose_cpu_matmul(cpuinfo(avx512 + " avx512_bf16"), available=True, isa_limit="AVX512_CORE")[0] == ONEDNN_FP32
    )


@needs_onednn
def test_other_devices_dtypes_and_choices_take_torch_matmul(onednn_calls):
    weight, bias = torch.randn(8, 4), torch.randn(8)
    with using_cpu_matmul(TORCH):  # a CPU without AVX-512 (or a torch without oneDNN) gets torch's matmul
        linear(torch.randn(3, 4), weight, bias)
    with using_cpu_matmul(ONEDNN):
        # a tensor on another device (meta stands in for a GPU here: no GPU in the test machine) runs F.linear
        assert linear(torch.randn(3, 4, device="meta"), weight.to("meta"), bias.to("meta")).shape == (3, 8)
        linear(torch.randn(3, 4, dtype=torch.float64), weight.double(), bias.double())
        with torch.autocast("cpu", dtype=torch.float16):
            linear(torch.randn(3, 4), weight, bias)
        assert onednn_calls == []
        empty = torch.randn(0, 4, requires_grad=True)
        weight_grad = weight.clone().requires_grad_()
        linear(empty, weight_grad, bias).sum().backward()  # no rows: gradients zero, as F.linear's
        assert torch.count_nonzero(weight_grad.grad) == 0 and empty.grad.shape == (0, 4)
        expected = F.linear(torch.ones(2, 3, 4), weight, bias)
        torch.testing.assert_close(linear(torch.ones(2, 3, 4), weight, bias), expected)
    assert len(onednn_calls) == 2
    with using_cpu_matmul(ONEDNN_FP32):  # a CPU without native bf16: float32 on oneDNN, bf16 autocast as torch runs it
        with torch.autocast("cpu", dtype=torch.bfloat16):
            linear(torch.randn(3, 4), weight, bias)
        assert len(onednn_calls) == 2
        linear(torch.randn(3, 4), weight, bias)
        assert len(onednn_calls) == 3


def test_an_unknown_kernel_is_refused():
    with pytest.raises(ValueError, match="expected 'onednn', 'onednn-fp32' or 'torch'"):
        with using_cpu_matmul("mkl"):
            pass
