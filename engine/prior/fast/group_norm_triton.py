"""GroupNorm with its statistics computed by a Triton split reduction (CUDA), when Triton imports.

PyTorch's CUDA GroupNorm reduces each (sample, group) row with one thread block: at batch 1
to 3 that is 32 to 96 blocks for rows of up to a million values (the SD VAE at 512 x 512), a
few percent of an H100, and it was the largest single cost of the texture step after the
convolutions. Here each row is cut into chunks reduced by separate programs (mean and sum
of squared deviations per chunk, merged with Chan's formula), then one fused pass normalises.

The arithmetic follows PyTorch's kernels: statistics in float32, stored in the input's dtype
(as native_group_norm stores them), y = a * x + b with a = rstd * gamma and
b = beta - a * mean per channel; the backward is PyTorch's own native_group_norm_backward
on those statistics.

Channels-last (NHWC) inputs have kernels of their own, forward and backward, and give
channels-last outputs: PyTorch's CUDA GroupNorm makes such inputs contiguous first and returns
NCHW, so in a channels-last network every GroupNorm would cost two layout conversions (one
here, one in the next convolution). Per-channel chunk moments are merged into groups with
Chan's formula by one program per (sample, group), which also writes the fused a and b; the
backward is the textbook one, dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) per group,
with g = dy * gamma. Three launches a direction: a layer's few microseconds of bookkeeping in
PyTorch ops would cost more than its normalisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from .patching import replaced_methods

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None

CHUNK = 8192  # values of one row reduced by one program
BLOCK = 1024
NHWC_BLOCK_ROWS = 32  # channels-last reductions: tiles of (pixels, channels)
NHWC_BLOCK_C = 64
NHWC_BLOCK_P = 16  # chunk partials merged per iteration
NHWC_TARGET_PROGRAMS = 1024  # enough programs to fill the GPU at batch 1


def triton_available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _chunk_moments_kernel(x_ptr, partial_ptr, row_length, parts, CHUNK_SIZE: tl.constexpr,
                              BLOCK_SIZE: tl.constexpr):
        """Per (row, chunk): count, mean and sum of squared deviations, in float32 (two passes)."""
        row = tl.program_id(0)
        part = tl.program_id(1)
        start = part * CHUNK_SIZE
        base = x_ptr + row.to(tl.int64) * row_length
        total = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        for offset in range(0, CHUNK_SIZE, BLOCK_SIZE):
            index = start + offset + tl.arange(0, BLOCK_SIZE)
            total += tl.load(base + index, mask=index < row_length, other=0.0).to(tl.float32)
        count = tl.minimum(row_length - start, CHUNK_SIZE).to(tl.float32)
        mean = tl.sum(total, axis=0) / count
        squares = tl.zeros([BLOCK_SIZE], dtype=tl.float32)
        for offset in range(0, CHUNK_SIZE, BLOCK_SIZE):
            index = start + offset + tl.arange(0, BLOCK_SIZE)
            valid = index < row_length
            value = tl.load(base + index, mask=valid, other=0.0).to(tl.float32)
            deviation = tl.where(valid, value - mean, 0.0)
            squares += deviation * deviation
        out = partial_ptr + (row * parts + part) * 3
        tl.store(out, count)
        tl.store(out + 1, mean)
        tl.store(out + 2, tl.sum(squares, axis=0))

    @triton.jit
    def _normalise_kernel(x_ptr, y_ptr, a_ptr, b_ptr, numel, spatial, BLOCK_SIZE: tl.constexpr):
        """y = a[n, c] * x + b[n, c] over a contiguous (N, C, spatial) tensor."""
        index = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        valid = index < numel
        channel = index // spatial
        a = tl.load(a_ptr + channel, mask=valid, other=0.0)
        b = tl.load(b_ptr + channel, mask=valid, other=0.0)
        x = tl.load(x_ptr + index, mask=valid, other=0.0).to(tl.float32)
        tl.store(y_ptr + index, (a * x + b).to(y_ptr.dtype.element_ty), mask=valid)


if triton is not None:

    @triton.jit
    def _nhwc_chunk_moments_kernel(x_ptr, partial_ptr, spatial, channels, chunk_rows, parts,
                                   BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
        """Per (sample, chunk of pixels, channel) of an (N, spatial, C) tensor: mean and sum of
        squared deviations in float32 (two passes over the chunk)."""
        sample, part, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = block * BLOCK_C + tl.arange(0, BLOCK_C)
        col_valid = cols < channels
        start = part * chunk_rows
        end = tl.minimum(start + chunk_rows, spatial)
        base = x_ptr + sample.to(tl.int64) * spatial * channels
        total = tl.zeros([BLOCK_ROWS, BLOCK_C], dtype=tl.float32)
        for first in range(0, chunk_rows, BLOCK_ROWS):
            rows = start + first + tl.arange(0, BLOCK_ROWS)
            valid = (rows < end)[:, None] & col_valid[None, :]
            total += tl.load(base + rows[:, None].to(tl.int64) * channels + cols[None, :], mask=valid,
                             other=0.0).to(tl.float32)
        mean = tl.sum(total, axis=0) / (end - start)
        squares = tl.zeros([BLOCK_ROWS, BLOCK_C], dtype=tl.float32)
        for first in range(0, chunk_rows, BLOCK_ROWS):
            rows = start + first + tl.arange(0, BLOCK_ROWS)
            valid = (rows < end)[:, None] & col_valid[None, :]
            value = tl.load(base + rows[:, None].to(tl.int64) * channels + cols[None, :], mask=valid,
                            other=0.0).to(tl.float32)
            deviation = tl.where(valid, value - mean[None, :], 0.0)
            squares += deviation * deviation
        out = partial_ptr + ((sample * parts + part) * channels + cols) * 2
        tl.store(out, mean, mask=col_valid)
        tl.store(out + 1, tl.sum(squares, axis=0), mask=col_valid)

    # The two merge kernels are tiny: their integer arguments are not specialised on, so each compiles
    # once per block size, not once per layer shape (start-up on a fresh install). The kernels that
    # stream the tensors are specialised: knowing sizes divisible by 16 lets them vectorise.
    @triton.jit(do_not_specialize=["spatial", "channels", "chunk_rows", "parts", "group_size", "eps"])
    def _nhwc_group_moments_kernel(partial_ptr, stats_ptr, gamma_ptr, beta_ptr, a_ptr, b_ptr, spatial, channels,
                                   chunk_rows, parts, group_size, eps, BLOCK_P: tl.constexpr,
                                   BLOCK_G: tl.constexpr):
        """One program per (sample, group): the chunk moments of the group's channels merged with
        Chan's formula into mean and rstd (stats, (N, groups, 2)), and y = a x + b's a and b (N, C)."""
        sample, group = tl.program_id(0), tl.program_id(1)
        groups = channels // group_size
        cols = group * group_size + tl.arange(0, BLOCK_G)
        col_valid = tl.arange(0, BLOCK_G) < group_size
        count_all = (spatial * group_size).to(tl.float32)
        weighted = tl.zeros([BLOCK_P, BLOCK_G], dtype=tl.float32)
        for first in range(0, parts, BLOCK_P):
            part = first + tl.arange(0, BLOCK_P)
            valid = (part < parts)[:, None] & col_valid[None, :]
            count = tl.minimum(spatial - part * chunk_rows, chunk_rows).to(tl.float32)
            mean = tl.load(partial_ptr + ((sample * parts + part[:, None]) * channels + cols[None, :]) * 2,
                           mask=valid, other=0.0)
            weighted += tl.where(valid, count[:, None] * mean, 0.0)
        group_mean = tl.sum(tl.sum(weighted, axis=1), axis=0) / count_all
        m2 = tl.zeros([BLOCK_P, BLOCK_G], dtype=tl.float32)
        for first in range(0, parts, BLOCK_P):
            part = first + tl.arange(0, BLOCK_P)
            valid = (part < parts)[:, None] & col_valid[None, :]
            count = tl.minimum(spatial - part * chunk_rows, chunk_rows).to(tl.float32)
            index = ((sample * parts + part[:, None]) * channels + cols[None, :]) * 2
            mean = tl.load(partial_ptr + index, mask=valid, other=0.0)
            squares = tl.load(partial_ptr + index + 1, mask=valid, other=0.0)
            deviation = mean - group_mean
            m2 += tl.where(valid, squares + count[:, None] * deviation * deviation, 0.0)
        variance = tl.maximum(tl.sum(tl.sum(m2, axis=1), axis=0) / count_all, 0.0)
        rstd = 1.0 / tl.sqrt(variance + eps)
        tl.store(stats_ptr + (sample * groups + group) * 2, group_mean)
        tl.store(stats_ptr + (sample * groups + group) * 2 + 1, rstd)
        gamma = tl.load(gamma_ptr + cols, mask=col_valid, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + cols, mask=col_valid, other=0.0).to(tl.float32)
        a = rstd * gamma
        tl.store(a_ptr + sample * channels + cols, a, mask=col_valid)
        tl.store(b_ptr + sample * channels + cols, beta - a * group_mean, mask=col_valid)

    @triton.jit
    def _nhwc_gradient_sums_kernel(x_ptr, grad_ptr, stats_ptr, gamma_ptr, partial_ptr, spatial, channels,
                                   chunk_rows, parts, group_size, BLOCK_ROWS: tl.constexpr, BLOCK_C: tl.constexpr):
        """Per (sample, chunk, channel): sums of g = dy * gamma and of g * x_hat."""
        sample, part, block = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        cols = block * BLOCK_C + tl.arange(0, BLOCK_C)
        col_valid = cols < channels
        stats = stats_ptr + (sample * (channels // group_size) + cols // group_size) * 2
        mean = tl.load(stats, mask=col_valid, other=0.0)
        rstd = tl.load(stats + 1, mask=col_valid, other=0.0)
        gamma = tl.load(gamma_ptr + cols, mask=col_valid, other=0.0).to(tl.float32)
        start = part * chunk_rows
        end = tl.minimum(start + chunk_rows, spatial)
        offset = sample.to(tl.int64) * spatial * channels
        sum_g = tl.zeros([BLOCK_ROWS, BLOCK_C], dtype=tl.float32)
        sum_gx = tl.zeros([BLOCK_ROWS, BLOCK_C], dtype=tl.float32)
        for first in range(0, chunk_rows, BLOCK_ROWS):
            rows = start + first + tl.arange(0, BLOCK_ROWS)
            valid = (rows < end)[:, None] & col_valid[None, :]
            index = offset + rows[:, None].to(tl.int64) * channels + cols[None, :]
            x = tl.load(x_ptr + index, mask=valid, other=0.0).to(tl.float32)
            g = tl.load(grad_ptr + index, mask=valid, other=0.0).to(tl.float32) * gamma[None, :]
            sum_g += g
            sum_gx += tl.where(valid, g * (x - mean[None, :]) * rstd[None, :], 0.0)
        out = partial_ptr + ((sample * parts + part) * channels + cols) * 2
        tl.store(out, tl.sum(sum_g, axis=0), mask=col_valid)
        tl.store(out + 1, tl.sum(sum_gx, axis=0), mask=col_valid)

    @triton.jit(do_not_specialize=["spatial", "channels", "parts", "group_size"])
    def _nhwc_group_sums_kernel(partial_ptr, means_ptr, spatial, channels, parts, group_size,
                                BLOCK_P: tl.constexpr, BLOCK_G: tl.constexpr):
        """One program per (sample, group): the means of g and g * x_hat over the group."""
        sample, group = tl.program_id(0), tl.program_id(1)
        cols = group * group_size + tl.arange(0, BLOCK_G)
        col_valid = tl.arange(0, BLOCK_G) < group_size
        sum_g = tl.zeros([BLOCK_P, BLOCK_G], dtype=tl.float32)
        sum_gx = tl.zeros([BLOCK_P, BLOCK_G], dtype=tl.float32)
        for first in range(0, parts, BLOCK_P):
            part = first + tl.arange(0, BLOCK_P)
            valid = (part < parts)[:, None] & col_valid[None, :]
            index = ((sample * parts + part[:, None]) * channels + cols[None, :]) * 2
            sum_g += tl.load(partial_ptr + index, mask=valid, other=0.0)
            sum_gx += tl.load(partial_ptr + index + 1, mask=valid, other=0.0)
        count_all = (spatial * group_size).to(tl.float32)
        out = means_ptr + (sample * (channels // group_size) + group) * 2
        tl.store(out, tl.sum(tl.sum(sum_g, axis=1), axis=0) / count_all)
        tl.store(out + 1, tl.sum(tl.sum(sum_gx, axis=1), axis=0) / count_all)

    @triton.jit
    def _nhwc_affine_kernel(x_ptr, y_ptr, a_ptr, b_ptr, numel, per_sample, channels, BLOCK_SIZE: tl.constexpr):
        """y = a[n, c] * x + b[n, c] over a dense (N, spatial, C) tensor."""
        index = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        valid = index < numel
        parameter = (index // per_sample) * channels + index % channels
        a = tl.load(a_ptr + parameter, mask=valid, other=0.0)
        b = tl.load(b_ptr + parameter, mask=valid, other=0.0)
        x = tl.load(x_ptr + index, mask=valid, other=0.0).to(tl.float32)
        tl.store(y_ptr + index, (a * x + b).to(y_ptr.dtype.element_ty), mask=valid)

    @triton.jit
    def _nhwc_input_gradient_kernel(x_ptr, grad_ptr, y_ptr, gamma_ptr, stats_ptr, means_ptr, numel, per_sample,
                                    channels, group_size, BLOCK_SIZE: tl.constexpr):
        """dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)), g = dy * gamma, per group."""
        index = tl.program_id(0).to(tl.int64) * BLOCK_SIZE + tl.arange(0, BLOCK_SIZE)
        valid = index < numel
        channel = index % channels
        row = ((index // per_sample) * (channels // group_size) + channel // group_size) * 2
        mean = tl.load(stats_ptr + row, mask=valid, other=0.0)
        rstd = tl.load(stats_ptr + row + 1, mask=valid, other=0.0)
        mean_g = tl.load(means_ptr + row, mask=valid, other=0.0)
        mean_gx = tl.load(means_ptr + row + 1, mask=valid, other=0.0)
        x_hat = (tl.load(x_ptr + index, mask=valid, other=0.0).to(tl.float32) - mean) * rstd
        gamma = tl.load(gamma_ptr + channel, mask=valid, other=0.0).to(tl.float32)
        g = tl.load(grad_ptr + index, mask=valid, other=0.0).to(tl.float32) * gamma
        tl.store(y_ptr + index, (rstd * (g - mean_g - x_hat * mean_gx)).to(y_ptr.dtype.element_ty), mask=valid)


def _nhwc_grid(x: Tensor) -> tuple[int, int, int, int]:
    """(spatial, chunk rows, parts, channel blocks) for the NHWC reductions."""
    n, c = x.shape[:2]
    spatial = x.numel() // (n * c)
    blocks = triton.cdiv(c, NHWC_BLOCK_C)
    wanted_parts = max(1, NHWC_TARGET_PROGRAMS // (n * blocks))
    chunk_rows = max(NHWC_BLOCK_ROWS, triton.cdiv(triton.cdiv(spatial, wanted_parts), NHWC_BLOCK_ROWS)
                     * NHWC_BLOCK_ROWS)
    return spatial, chunk_rows, triton.cdiv(spatial, chunk_rows), blocks


def nhwc_group_norm_parameters(x: Tensor, groups: int, gamma: Tensor, beta: Tensor, eps: float
                               ) -> tuple[Tensor, Tensor, Tensor]:
    """For a channels-last (N, C, H, W) tensor: stats (N, groups, 2) = (mean, rstd) in float32, and
    a, b (N, C) with GroupNorm(x) = a x + b."""
    n, c = x.shape[:2]
    spatial, chunk_rows, parts, blocks = _nhwc_grid(x)
    partial = torch.empty(n, parts, c, 2, dtype=torch.float32, device=x.device)
    _nhwc_chunk_moments_kernel[(n, parts, blocks)](x, partial, spatial, c, chunk_rows, parts,
                                                   BLOCK_ROWS=NHWC_BLOCK_ROWS, BLOCK_C=NHWC_BLOCK_C)
    stats = torch.empty(n, groups, 2, dtype=torch.float32, device=x.device)
    a = torch.empty(n, c, dtype=torch.float32, device=x.device)
    b = torch.empty_like(a)
    group_size = c // groups
    _nhwc_group_moments_kernel[(n, groups)](partial, stats, gamma, beta, a, b, spatial, c, chunk_rows, parts,
                                            group_size, eps, BLOCK_P=NHWC_BLOCK_P,
                                            BLOCK_G=triton.next_power_of_2(group_size))
    return stats, a, b


class _TritonGroupNormNHWC(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float) -> Tensor:
        n, c = x.shape[:2]
        # The affine parameters are read in their own dtype: a float32 copy per call would be two more
        # kernels per layer.
        gamma = weight.contiguous() if weight is not None else torch.ones(c, device=x.device)
        beta = bias.contiguous() if bias is not None else torch.zeros(c, device=x.device)
        stats, a, b = nhwc_group_norm_parameters(x, groups, gamma, beta, eps)
        y = torch.empty_like(x)
        _nhwc_affine_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, a, b, x.numel(), x.numel() // n, c,
                                                              BLOCK_SIZE=BLOCK)
        ctx.save_for_backward(x, stats, gamma)
        ctx.groups = groups
        ctx.affine = (weight is not None, bias is not None)
        ctx.parameter_dtypes = (weight.dtype if weight is not None else None, bias.dtype if bias is not None else None)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, stats, gamma = ctx.saved_tensors
        n, c = x.shape[:2]
        groups = ctx.groups
        group_size = c // groups
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            spatial, chunk_rows, parts, blocks = _nhwc_grid(x)
            partial = torch.empty(n, parts, c, 2, dtype=torch.float32, device=x.device)
            _nhwc_gradient_sums_kernel[(n, parts, blocks)](x, grad, stats, gamma, partial, spatial, c, chunk_rows,
                                                           parts, group_size, BLOCK_ROWS=NHWC_BLOCK_ROWS,
                                                           BLOCK_C=NHWC_BLOCK_C)
            means = torch.empty(n, groups, 2, dtype=torch.float32, device=x.device)
            _nhwc_group_sums_kernel[(n, groups)](partial, means, spatial, c, parts, group_size, BLOCK_P=NHWC_BLOCK_P,
                                                 BLOCK_G=triton.next_power_of_2(group_size))
            grad_x = torch.empty_like(x)
            _nhwc_input_gradient_kernel[(triton.cdiv(x.numel(), BLOCK),)](
                x, grad, grad_x, gamma, stats, means, x.numel(), x.numel() // n, c, group_size, BLOCK_SIZE=BLOCK)
        if (ctx.affine[0] and ctx.needs_input_grad[1]) or (ctx.affine[1] and ctx.needs_input_grad[2]):
            # Parameter gradients (not needed by the jobs, whose networks are frozen): plain PyTorch.
            mean = stats[..., 0].repeat_interleave(group_size, dim=1).view(n, c, 1, 1)
            rstd = stats[..., 1].repeat_interleave(group_size, dim=1).view(n, c, 1, 1)
            x_hat = (x.float() - mean) * rstd
            if ctx.affine[0] and ctx.needs_input_grad[1]:
                grad_weight = (grad.float() * x_hat).sum((0, 2, 3)).to(ctx.parameter_dtypes[0])
            if ctx.affine[1] and ctx.needs_input_grad[2]:
                grad_bias = grad.float().sum((0, 2, 3)).to(ctx.parameter_dtypes[1])
        return grad_x, grad_weight, grad_bias, None, None


def group_statistics(x: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor]:
    """mean and rstd (N, groups) in float32 of a contiguous (N, C, ...) tensor."""
    rows = x.shape[0] * groups
    row_length = x.numel() // rows
    parts = triton.cdiv(row_length, CHUNK)
    partial = torch.empty(rows, parts, 3, dtype=torch.float32, device=x.device)
    _chunk_moments_kernel[(rows, parts)](x, partial, row_length, parts, CHUNK_SIZE=CHUNK, BLOCK_SIZE=BLOCK)
    counts, means, squares = partial.unbind(-1)
    mean = (counts * means).sum(1) / row_length
    m2 = squares.sum(1) + (counts * (means - mean[:, None]).square()).sum(1)
    rstd = torch.rsqrt((m2 / row_length).clamp_min(0.0) + eps)
    return mean.view(x.shape[0], groups), rstd.view(x.shape[0], groups)


class _TritonGroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, groups: int, eps: float) -> Tensor:
        n, c = x.shape[:2]
        spatial = x.numel() // (n * c)
        mean, rstd = group_statistics(x, groups, eps)
        # Stored as native_group_norm stores them (the input's dtype, unless the affine parameters'
        # dtype differs); the fused parameters in float32.
        mixed = (weight is not None and weight.dtype != x.dtype) or (bias is not None and bias.dtype != x.dtype)
        stats_dtype = torch.float32 if mixed else x.dtype
        mean, rstd = mean.to(stats_dtype), rstd.to(stats_dtype)
        gamma = weight.float() if weight is not None else torch.ones(c, device=x.device)
        beta = bias.float() if bias is not None else torch.zeros(c, device=x.device)
        a = rstd.float().repeat_interleave(c // groups, dim=1) * gamma
        b = -a * mean.float().repeat_interleave(c // groups, dim=1) + beta
        y = torch.empty_like(x)
        _normalise_kernel[(triton.cdiv(x.numel(), BLOCK),)](x, y, a.contiguous(), b.contiguous(), x.numel(),
                                                            spatial, BLOCK_SIZE=BLOCK)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.groups, ctx.has_bias = groups, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, mean, rstd, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1],
                ctx.has_bias and ctx.needs_input_grad[2]]
        grad_x, grad_weight, grad_bias = torch.ops.aten.native_group_norm_backward(
            grad.contiguous(), x, mean, rstd, weight, n, c, x.numel() // (n * c), ctx.groups, mask)
        return grad_x, grad_weight, grad_bias, None, None


def is_channels_last(x: Tensor) -> bool:
    """A 4-D tensor laid out NHWC (and not also plain contiguous, as some tiny shapes are)."""
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def group_norm(x: Tensor, groups: int, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """GroupNorm of a contiguous (N, C, ...) or channels-last (N, C, H, W) tensor, in its own layout."""
    if is_channels_last(x):
        return _TritonGroupNormNHWC.apply(x, weight, bias, groups, eps)
    return _TritonGroupNorm.apply(x, weight, bias, groups, eps)


def _usable(x: Tensor, module: torch.nn.GroupNorm) -> bool:
    return (x.is_cuda and x.dim() >= 3 and (x.is_contiguous() or is_channels_last(x))
            and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and x.shape[1] == module.num_channels and x.numel() > 0)


@contextmanager
def triton_group_norms(*modules: torch.nn.Module) -> Iterator[None]:
    """While active, every nn.GroupNorm inside `modules` normalises CUDA tensors with the kernels above."""
    norms = [m for module in modules if module is not None for m in module.modules()
             if isinstance(m, torch.nn.GroupNorm)] if triton is not None else []

    def forward(norm: torch.nn.GroupNorm):
        original = norm.forward
        return lambda x: (group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps) if _usable(x, norm)
                          else original(x))
    with replaced_methods((norm, "forward", forward(norm)) for norm in norms):
        yield
