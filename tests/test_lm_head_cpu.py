"""zephyr/lm_head_cpu.py: the CPU log-prob kernel keeps the contract of TRL's ChunkedLogProbFunction (the same five
outputs, the same gradients) and zephyr/hooks/lm_head.py swaps it in for CPU tensors only."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from trl.kernels import ChunkedLogProbFunction

from zephyr import lm_head_cpu
from zephyr.hooks import cpu_log_prob_kernel
from zephyr.lm_head_cpu import CPULogProb

OUTPUTS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")


def test_trl_kernel_still_has_the_contract_zephyr_keeps():
    params = tuple(inspect.signature(ChunkedLogProbFunction.forward).parameters)
    assert params == ("ctx", "hidden", "weight", "bias", "targets", "temperature", "chunk_size",
                      "final_logit_softcapping", "logit_scale", "outputs")
    assert tuple(inspect.signature(CPULogProb.forward).parameters) == params


def run(fn, hidden, weight, bias, targets, settings, entropy_weight):
    leaves = [x for x in (hidden, weight, bias) if x is not None]
    for x in leaves:
        x.grad = None
    out = fn.apply(hidden, weight, bias, targets, *settings, OUTPUTS)
    (out[0] * torch.linspace(0.5, 1.5, len(targets))).sum().add(entropy_weight * out[1].sum()).backward()
    return [o.detach() for o in out], [x.grad.clone() for x in leaves]


@pytest.mark.parametrize(("bias", "temperature", "softcap", "logit_scale", "entropy_weight"), [
    (False, 1.0, None, 1.0, 0.0),  # DPO as TRL calls it (entropy logged, not trained)
    (True, 0.7, None, 1.0, 0.3),  # a bias, a temperature, a gradient through the entropy
    (False, 1.0, 30.0, 0.5, 0.2),  # Gemma-style soft-capping and a logit scale
])
def test_cpu_kernel_matches_trl_outputs_and_gradients_across_many_tiles(monkeypatch, bias, temperature, softcap,
                                                                        logit_scale, entropy_weight):
    monkeypatch.setattr(lm_head_cpu, "TOKENS", 16)  # small tiles: rows and columns span several, with remainders
    monkeypatch.setattr(lm_head_cpu, "VOCAB", 64)
    gen = torch.Generator().manual_seed(0)
    n, h, v = 50, 24, 300
    hidden = torch.randn(n, h, generator=gen).requires_grad_()
    weight = torch.randn(v, h, generator=gen).mul(0.3).requires_grad_()
    b = torch.randn(v, generator=gen).requires_grad_() if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    with torch.no_grad():  # make target 0 a top-1 tie with a later column for the first row: the first one wins
        weight[150] = weight[targets[0]]
        if b is not None:
            b[150] = b[targets[0]]
    settings = (temperature, 32768, softcap, logit_scale)
    ours, our_grads = run(CPULogProb, hidden, weight, b, targets, settings, entropy_weight)
    theirs, their_grads = run(ChunkedLogProbFunction, hidden, weight, b, targets, settings, entropy_weight)
    for name, a, t in zip(OUTPUTS, ours, theirs, strict=True):
        if name == "is_top1":
            assert torch.equal(a, t), name
        else:  # fp32 sums over a 300-entry vocabulary: a few ulps of values of order 10
            torch.testing.assert_close(a, t, atol=1e-5, rtol=1e-5, msg=name)
    for a, t in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(a, t, atol=1e-5, rtol=1e-4)


def test_hook_runs_zephyrs_kernel_on_cpu_and_restores_trls():
    from trl.trainer import utils

    original = utils._ChunkedLogProbFunction
    hidden, weight = torch.randn(4, 8, requires_grad=True), torch.randn(16, 8)
    with cpu_log_prob_kernel():
        out = utils._ChunkedLogProbFunction.apply(hidden, weight, None, torch.tensor([1, 2, 3, 4]), 1.0, 32768, None,
                                                  1.0, ("log_probs",))
    assert "CPULogProb" in type(out[0].grad_fn).__name__
    assert utils._ChunkedLogProbFunction is original


def test_cpu_kernel_under_bf16_autocast_matches_autograd_on_the_same_bf16_logits():
    """Under autocast the projection is a bf16 matmul; the kernel's backward recomputes it in that same dtype, so
    its gradients are those of the bf16 logits it scored. The reference is autograd through exactly those logits
    (bf16-rounded operands and outputs, gradients in fp32): the two then differ by fp32 summation order only.
    (Recomputing the logits in fp32 against a log_z taken from bf16 logits put the gradients ~1e-2 off.)"""
    gen = torch.Generator().manual_seed(0)
    n, h, v = 40, 32, 500
    hidden = torch.randn(n, h, generator=gen).requires_grad_()
    weight = torch.randn(v, h, generator=gen).mul(0.3).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=gen)
    scale = torch.linspace(0.5, 1.5, n)

    def bf16_rounded(x):  # the value bf16 holds, with an fp32 gradient passed straight through
        return x + (x.bfloat16().float() - x).detach()

    def grads(fn, autocast):
        hidden.grad = weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            log_probs = fn()
        (log_probs.float() * scale).sum().backward()
        return log_probs.detach().float(), hidden.grad.clone(), weight.grad.clone()

    def autograd():
        logits = bf16_rounded(bf16_rounded(hidden) @ bf16_rounded(weight).t())
        return logits.log_softmax(-1).gather(1, targets[:, None]).squeeze(1)

    def kernel():
        return CPULogProb.apply(hidden, weight, None, targets, 1.0, 32768, None, 1.0, ("log_probs",))[0]

    want, got = grads(autograd, False), grads(kernel, True)
    # fp32 sums of ~v terms in another order; a logit on a bf16 rounding boundary may land one bf16 ulp away
    tol = 4 * torch.finfo(torch.float32).eps * math.sqrt(v) * 8
    torch.testing.assert_close(got[0], want[0], atol=tol, rtol=0)
    for g, w in zip(got[1:], want[1:], strict=True):
        assert float((g - w).abs().max() / w.abs().max()) < tol
