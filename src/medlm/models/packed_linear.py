"""The linear layers of a model on weights packed once for a batch size, while it decodes on an x86
CPU in float32.

A decoding step multiplies every weight matrix by only B rows. At a few rows, MKL's ordinary
``sgemm`` is far from the memory bandwidth that such a product is bound by; the same product on a
weight packed once into MKL's blocked layout for exactly B rows (``_mkl_reorder_linear_weight``
and ``_mkl_linear``, the ops that ``torch.compile``'s freezing pass uses for CPU inference) is
faster (measured in docs/benchmarks.md). Calls with another number of rows (the prefill) take the
ordinary path inside the same op, with the same weights.

The packed copies take as much memory as the weights, so they exist only inside
:func:`packed_linears`, and :func:`packing_pays` declines when memory is short.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
from torch import Tensor, nn

# Below this batch the packed product measured no faster than F.linear; packing all the weights
# costs about as much as a few decoding steps save (docs/benchmarks.md).
MIN_BATCH = 4
MIN_STEPS = 16


def available() -> bool:
    """Whether this torch build has MKL's packed linear ops."""
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")


def _linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if type(m) is nn.Linear]


def packing_pays(model: nn.Module, batch_size: int, steps: int) -> bool:
    """Whether ``generate`` packs by default: MKL present, float32 linear weights on the CPU, a
    batch of at least ``MIN_BATCH`` rows, at least ``MIN_STEPS`` decoding steps to repay the
    packing, and room in memory for a second copy of the weights."""
    linears = _linears(model)
    if batch_size < MIN_BATCH or steps < MIN_STEPS or not linears or not available():
        return False
    if any(m.weight.device.type != "cpu" or m.weight.dtype != torch.float32 for m in linears):
        return False
    weight_bytes = sum(m.weight.numel() * 4 for m in {id(m.weight): m for m in linears}.values())
    return weight_bytes < _available_memory() // 2


def _available_memory() -> int:
    """Bytes of memory available now (Linux); 0, so that nothing is packed, where unknown."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def _packed_forward(
    packed: Tensor, weight: Tensor, bias: Tensor | None, batch_size: int, x: Tensor
) -> Tensor:
    return torch.ops.mkl._mkl_linear(x, packed, weight, bias, batch_size)


@contextmanager
def packed_linears(model: nn.Module, batch_size: int) -> Iterator[None]:
    """Inside the block, every float32 ``nn.Linear`` of ``model`` on the CPU multiplies through a
    copy of its weight packed for ``batch_size`` rows (inference only: the op has no gradient).
    Without MKL the block runs the model unchanged."""
    patched: list[nn.Linear] = []
    try:
        if available():
            for m in _linears(model):
                w = m.weight.detach()
                if w.device.type != "cpu" or w.dtype != torch.float32:
                    continue
                packed = torch.ops.mkl._mkl_reorder_linear_weight(w, batch_size)
                bias = None if m.bias is None else m.bias.detach()
                m.forward = partial(_packed_forward, packed, w, bias, batch_size)
                patched.append(m)
        yield
    finally:
        for m in patched:
            del m.forward  # the class's forward again
