"""torch.compile(fullgraph=True) over pykernels ops: the custom ops trace as single nodes (their
fake functions give the shapes) and the compiled model matches eager, forward and gradients."""
import pytest
import torch

import pykernels.nn
import pykernels.ops as ops
from helpers import make_tensor


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = pykernels.nn.Linear(20, 16)
        self.fc2 = pykernels.nn.Linear(16, 5)

    def forward(self, x, y):
        h = ops.linear(x, self.fc1.weight, self.fc1.bias, activation="gelu")
        return ops.matmul(self.fc2(h), y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compile_fullgraph_matches_eager(dtype, gen):
    torch.manual_seed(0)
    net = _Net().to(dtype)
    x = make_tensor((2, 7, 20), dtype, gen)
    y = make_tensor((5, 3), dtype, gen).requires_grad_()
    dout = make_tensor((2, 7, 3), dtype, gen)

    def run(model):
        for p in list(model.parameters()) + [y]:
            p.grad = None
        out = model(x, y)
        out.backward(dout)
        return [out.detach()] + [p.grad.clone() for p in list(net.parameters()) + [y]]

    eager = run(net)
    torch._dynamo.reset()
    compiled = run(torch.compile(net, fullgraph=True))
    for e, c in zip(eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-6)
