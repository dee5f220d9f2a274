"""GraphedForward: CUDA-graph replay gives the eager result; CPU runs eagerly."""

import pytest
import torch
from torch import nn

from neurotrain.engine.inference import GraphedForward


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Conv3d(4, 1, 1)).eval()


def test_cpu_runs_eagerly_and_matches_module():
    net = _net()
    x = torch.randn(2, 1, 4, 8, 8)
    g = GraphedForward(net)
    with torch.no_grad():
        assert torch.equal(g(x), net(x))
    assert g._graphs == {}


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_graph_replay_matches_eager_per_shape(precision):
    net = _net().cuda()
    g = GraphedForward(net, precision, max_graphs=2)
    for shape in [(1, 1, 4, 16, 16), (2, 1, 4, 16, 16), (1, 1, 4, 16, 16), (3, 1, 4, 16, 16)]:
        x = torch.randn(shape, device="cuda")
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=precision == "bf16"):
            ref = net(x).float()
        out = g(x)
        tol = 1e-5 if precision == "fp32" else 2e-2
        assert torch.allclose(out, ref, atol=tol, rtol=tol)
        x.add_(1.0)  # the replay copied the input: changing it now must not change the output
        assert torch.allclose(out, ref, atol=tol, rtol=tol)
    assert len(g._graphs) == 2  # least recently used shape dropped
