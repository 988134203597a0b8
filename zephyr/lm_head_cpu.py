"""Per-token log-probs through the LM head on CPU, in cache-sized tiles, without materializing the logits.

TRL's fused LM head (trl.kernels.chunked_logprob) runs Triton kernels on GPUs; elsewhere it falls back to torch ops
on [4096 tokens x 32768 vocabulary] tiles: half a gigabyte per tile in fp32, walked a dozen times per tile by
out-of-place elementwise ops. On a 2-core CPU that fallback was ~75% of a dDPO step with a 32k vocabulary, most of
it memory traffic, not the matmuls. This is the same computation (same inputs, outputs and gradients as TRL's
`ChunkedLogProbFunction`) on tiles that fit in cache, updated in place, and with one pass per tile where TRL's
fallback makes several. `zephyr/hooks/lm_head.py` swaps it in for CPU tensors only.

Like TRL's kernel, the projection runs in the compute dtype in force at the forward (autocast's, else the
hidden states'), and the backward recomputes it in that same dtype: logits recomputed in fp32 against a `log_z`
taken from bf16 logits would give gradients that belong to neither.
"""

from __future__ import annotations

import math

import torch
from trl.trainer.utils import maybe_gather_lm_head_ctx

TOKENS = 256  # rows of a tile
VOCAB = 4096  # columns of a tile: 256 x 4096 fp32 = 4 MiB


def _logits(h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """One tile of logits, projected in the compute dtype, returned in fp32."""
    z = (h.to(dtype) @ w.to(dtype).t()).float()
    if bias is not None:
        z += bias.to(dtype).float()
    return z


def _transform(tile: torch.Tensor, logit_scale: float, softcap: float | None, inv_t: float) -> torch.Tensor | None:
    """Logits -> the scaled (and soft-capped) logits, in place; returns tanh(.) when soft-capping (for backward)."""
    if softcap is None:
        if logit_scale * inv_t != 1.0:
            tile.mul_(logit_scale * inv_t)
        return None
    tile.mul_(logit_scale / softcap).tanh_()
    t = tile.clone()
    tile.mul_(softcap * inv_t)
    return t


class CPULogProb(torch.autograd.Function):
    """`trl.kernels.ChunkedLogProbFunction`'s contract: (hidden [N, H], weight [V, H], bias [V] | None, targets [N],
    temperature, chunk_size, final_logit_softcapping, logit_scale, outputs) -> (log_probs, entropy, log_sum_sq_probs,
    mean_logits, is_top1), the optional ones None unless named in `outputs`. Differentiable in log_probs and
    entropy. `chunk_size` is TRL's GPU tile width and is not used."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
                logit_scale=1.0, outputs=("log_probs",)):
        ctx.set_materialize_grads(False)  # entropy is usually logged only: no zero gradient to fold in
        device = hidden.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        n, vocab = hidden.shape[0], weight.shape[0]
        inv_t, softcap = 1.0 / temperature, final_logit_softcapping
        f32 = dict(dtype=torch.float32, device=hidden.device)
        running_max = torch.full((n,), -math.inf, **f32)
        sum_exp, x_sum_exp, sq_sum_exp, z_sum, target_z = (torch.zeros(n, **f32) for _ in range(5))
        top = torch.zeros(n, dtype=torch.long, device=hidden.device)  # the first argmax
        want = set(outputs)
        for a in range(0, n, TOKENS):
            b = min(a + TOKENS, n)
            h, tgt = hidden[a:b], targets[a:b]
            m, s = running_max[a:b], sum_exp[a:b]
            for v0 in range(0, vocab, VOCAB):
                v1 = min(v0 + VOCAB, vocab)
                z = _logits(h, weight[v0:v1], None if bias is None else bias[v0:v1], compute)
                _transform(z, logit_scale, softcap, inv_t)
                inside = (tgt >= v0) & (tgt < v1)
                local = (tgt - v0).clamp(0, v1 - v0 - 1)
                target_z[a:b] = torch.where(inside, z.gather(1, local[:, None]).squeeze(1), target_z[a:b])
                if "mean_logits" in want:
                    z_sum[a:b] += z.sum(1)
                tile_max, tile_arg = z.max(1)
                if "is_top1" in want:  # strictly greater: an earlier chunk keeps a tie (argmax takes the first)
                    top[a:b] = torch.where(tile_max > m, tile_arg + v0, top[a:b])
                new_m = torch.maximum(m, tile_max)
                rescale = torch.exp(m - new_m)
                e = z.sub(new_m[:, None]).exp_()
                if "entropy" in want:
                    x_sum_exp[a:b] = x_sum_exp[a:b] * rescale + torch.einsum("ij,ij->i", e, z)
                if "log_sum_sq_probs" in want:
                    sq_sum_exp[a:b] = sq_sum_exp[a:b] * rescale * rescale + torch.einsum("ij,ij->i", e, e)
                s.mul_(rescale).add_(e.sum(1))
                m.copy_(new_m)
        log_z = running_max + sum_exp.log()
        log_probs = target_z - log_z
        entropy = log_z - x_sum_exp / sum_exp if "entropy" in want else None
        log_sum_sq = sq_sum_exp.log() - 2 * sum_exp.log() if "log_sum_sq_probs" in want else None
        mean_logits = z_sum / vocab if "mean_logits" in want else None
        is_top1 = top == targets if "is_top1" in want else None
        ctx.save_for_backward(hidden, weight, bias, targets, log_z, log_z if entropy is None else entropy)
        ctx.settings = (inv_t, softcap, logit_scale, compute)
        ctx.mark_non_differentiable(*(x for x in (log_sum_sq, mean_logits, is_top1) if x is not None))
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1

    @staticmethod
    def backward(ctx, grad_log_probs, grad_entropy, *_):
        hidden, weight, bias, targets, log_z, entropy = ctx.saved_tensors
        with maybe_gather_lm_head_ctx(weight, bias):  # ZeRO-3: the head's weight is a shard again by now
            return CPULogProb._backward(ctx, hidden, weight, bias, targets, log_z, entropy, grad_log_probs,
                                        grad_entropy)

    @staticmethod
    def _backward(ctx, hidden, weight, bias, targets, log_z, entropy, grad_log_probs, grad_entropy):
        inv_t, softcap, logit_scale, compute = ctx.settings
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        n, vocab = hidden.shape[0], weight.shape[0]
        grad_hidden = torch.zeros(hidden.shape, dtype=torch.float32) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32) if need_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32) if need_bias else None
        g_lp = grad_log_probs.float() if grad_log_probs is not None else None
        g_ent = grad_entropy.float() if grad_entropy is not None else None
        for a in range(0, n, TOKENS):
            b = min(a + TOKENS, n)
            h, tgt, lz = hidden[a:b].to(compute), targets[a:b], log_z[a:b, None]  # the forward's operands
            rows = torch.arange(b - a)
            for v0 in range(0, vocab, VOCAB):
                v1 = min(v0 + VOCAB, vocab)
                w = weight[v0:v1].to(compute)
                grad = _logits(h, w, None if bias is None else bias[v0:v1], compute)
                t = _transform(grad, logit_scale, softcap, inv_t)
                grad.sub_(lz)  # log p
                if g_ent is not None:  # d entropy / dz = -p (log p + entropy)
                    p = grad.exp()
                    grad.add_(entropy[a:b, None]).mul_(-g_ent[a:b, None])
                    if g_lp is not None:
                        grad.sub_(g_lp[a:b, None])
                    grad.mul_(p)
                else:  # d log p_target / dz = onehot(target) - p
                    grad.exp_().mul_(-g_lp[a:b, None])
                if g_lp is not None:
                    inside = (tgt >= v0) & (tgt < v1)
                    grad[rows[inside], tgt[inside] - v0] += g_lp[a:b][inside]
                chain = inv_t * logit_scale  # d z / d logits, times (1 - tanh^2) when soft-capping
                if softcap is not None:
                    grad.mul_(t.mul_(t).neg_().add_(1))
                if chain != 1.0:
                    grad.mul_(chain)
                if grad_hidden is not None:
                    grad_hidden[a:b].addmm_(grad, w.float())
                if grad_weight is not None:
                    grad_weight[v0:v1].addmm_(grad.t(), h.float())
                if grad_bias is not None:
                    grad_bias[v0:v1] += grad.sum(0)
        return (grad_hidden.to(hidden.dtype) if grad_hidden is not None else None,
                grad_weight.to(weight.dtype) if grad_weight is not None else None,
                grad_bias.to(bias.dtype) if grad_bias is not None else None,
                None, None, None, None, None, None)
