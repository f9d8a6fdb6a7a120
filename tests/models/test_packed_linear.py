"""Linear layers on packed weights: the same outputs, the model restored afterwards."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medlm.models import packed_linear
from medlm.models.packed_linear import packed_linears, packing_pays

needs_mkl = pytest.mark.skipif(not packed_linear.available(), reason="torch built without MKL")


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 300), nn.GELU(), nn.Linear(300, 50, bias=False))


@needs_mkl
@pytest.mark.parametrize("rows", [4, 7])  # the packed batch, and any other (the ordinary path)
def test_packed_outputs_equal_the_plain_ones(rows):
    net = _net()
    x = torch.randn(rows, 1, 64)
    with torch.inference_mode():
        ref = net(x)
        with packed_linears(net, 4):
            assert all("forward" in vars(m) for m in net if isinstance(m, nn.Linear))
            got = net(x)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    assert not any("forward" in vars(m) for m in net)  # the class's forward again
    torch.testing.assert_close(net[0](x[:, 0]), F.linear(x[:, 0], net[0].weight, net[0].bias))


def test_other_dtypes_and_devices_are_left_alone():
    net = _net().to(torch.float64)
    with packed_linears(net, 4):
        assert not any("forward" in vars(m) for m in net)
    assert not packing_pays(net, 4, 100)


@needs_mkl
def test_packing_pays_for_a_batch_and_with_memory(monkeypatch):
    net = _net()
    batch, steps = packed_linear.MIN_BATCH, packed_linear.MIN_STEPS
    assert packing_pays(net, batch, steps)
    assert not packing_pays(net, batch - 1, steps)
    assert not packing_pays(net, batch, steps - 1)
    monkeypatch.setattr(packed_linear, "_available_memory", lambda: 1000)
    assert not packing_pays(net, batch, steps)
