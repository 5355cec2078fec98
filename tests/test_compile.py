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


# ---- whole models built from pykernels layers -----------------------------------------------
class _SmallCNN(torch.nn.Module):
    """Conv2d -> relu -> MaxPool2d -> Conv2d -> AvgPool2d -> Linear, on [N, 3, 12, 12]."""

    def __init__(self):
        super().__init__()
        self.conv1 = pykernels.nn.Conv2d(3, 6, 3, padding=1)
        self.pool1 = pykernels.nn.MaxPool2d(2)
        self.conv2 = pykernels.nn.Conv2d(6, 8, 3, padding=1)
        self.pool2 = pykernels.nn.AvgPool2d(2)
        self.fc = pykernels.nn.Linear(8 * 3 * 3, 5)

    def forward(self, x):
        h = self.pool1(torch.relu(self.conv1(x)))
        h = self.pool2(torch.tanh(self.conv2(h)))
        return self.fc(h.flatten(1))


class _AttentionLSTM(torch.nn.Module):
    """MultiheadAttention (the fused path) + residual -> LSTM -> Linear on the last step, [B, T, E]."""

    def __init__(self):
        super().__init__()
        self.attn = pykernels.nn.MultiheadAttention(8, 2, batch_first=True)
        self.lstm = pykernels.nn.LSTM(8, 6, batch_first=True)
        self.head = pykernels.nn.Linear(6, 3)

    def forward(self, x):
        a, _ = self.attn(x, x, x, need_weights=False)
        y, (h, c) = self.lstm(x + a)
        return self.head(y[:, -1]) + c.sum()


@pytest.mark.parametrize("make, shape", [(_SmallCNN, (2, 3, 12, 12)), (_AttentionLSTM, (2, 5, 8))],
                         ids=["cnn", "attention_lstm"])
def test_compile_model_matches_eager(make, shape, gen):
    """A model of pykernels layers compiled with fullgraph=True by inductor (CPU): the same outputs
    and parameter/input gradients as eager. float64, so that inductor's own fused code around the
    ops (relu, tanh, flatten, the residual add) rounds far below the bound."""
    torch.manual_seed(0)
    model = make().double()
    x = make_tensor(shape, torch.float64, gen).requires_grad_()
    dout = None

    def run(fn):
        nonlocal dout
        model.zero_grad(set_to_none=True)
        x.grad = None
        out = fn(x)
        if dout is None:
            dout = make_tensor(tuple(out.shape), torch.float64, gen)
        out.backward(dout)
        return [out.detach(), x.grad.clone()] + [p.grad.clone() for p in model.parameters()]

    eager = run(model)
    torch._dynamo.reset()
    # dynamo refuses every isinstance of torch.nn.LSTM / GRU / RNN (pykernels.nn.LSTM is one) unless
    # allow_rnn is set; then it traces pykernels' forward like any module's
    with torch._dynamo.config.patch(allow_rnn=True):
        compiled = run(torch.compile(model, fullgraph=True))
    names = ["output", "grad of x"] + [f"grad of {n}" for n, _ in model.named_parameters()]
    for name, e, c in zip(names, eager, compiled):
        torch.testing.assert_close(c, e, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
