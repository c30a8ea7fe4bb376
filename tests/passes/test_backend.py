"""torch.compile(..., backend="ds4c") on a small conv net: the convolution has no template and runs on ATen
(logged with the reason), the rest is compiled, and the result equals eager. A graph with symbolic sizes is
compiled once per input signature, inference and training."""

import logging
import random

import pytest
import torch
from torch import nn

from ds4c import backend
from ds4c.capture import graph_from_fx
from ds4c.errors import Ds4cError
from ds4c.precision import assert_close


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8 * 5 * 7, 24)

    def forward(self, x):
        h = torch.relu(self.conv(x)) * 0.5 + 1
        return torch.tanh(self.fc(h.flatten(1)))


def test_conv_net_through_the_backend(device, caplog):
    torch.manual_seed(int(torch.randint(0, 2**31, ())))
    net = ConvNet().to(device).eval()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="ds4c")
    x = torch.randn(2, 3, 5, 7, device=device)
    with caplog.at_level(logging.WARNING, logger="ds4c.backend"), torch.no_grad():
        out = compiled(x)
        ref = net(x)
    assert_close(out.cpu(), ref.cpu())
    fallback = [r.getMessage() for r in caplog.records if "fall back to ATen" in r.getMessage()]
    assert fallback and "aten.convolution.default" in fallback[0] and "no ds4c template" in fallback[0]
    assert "mm" not in fallback[0] and "relu" not in fallback[0]  # linear and pointwise ops were compiled
    assert "running this graph on ATen as captured" not in caplog.text  # the graph itself was compiled
    with torch.no_grad():
        x = torch.randn(2, 3, 5, 7, device=device)
        assert_close(compiled(x).cpu(), net(x).cpu())
    torch._dynamo.reset()


class _Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(33, 65), nn.Linear(65, 7)

    def forward(self, x):
        return self.down(torch.nn.functional.gelu(self.up(x)) * 2.0).reshape(x.shape[0], -1)


def test_symbolic_sizes_compile_once_per_signature(device, caplog, ds4c_runs):
    torch.manual_seed(random.randint(0, 2**31))
    net = _Mlp().to(device).eval()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="ds4c", dynamic=True)
    rows = [5, 9, 5, 3, 9]
    with caplog.at_level(logging.INFO, logger="ds4c.backend"), torch.no_grad():
        for n in rows:
            x = torch.randn(n, 33, device=device)
            assert_close(compiled(x).cpu(), net(x).cpu())
    assert "running this graph on ATen" not in caplog.text
    specialized = [r.getMessage() for r in caplog.records if "compiling the graph for input shapes" in r.getMessage()]
    assert len(specialized) == len(set(rows)), specialized
    assert len(ds4c_runs) == len(rows)  # every call ran ds4c's kernels
    torch._dynamo.reset()


def test_past_the_limit_new_signatures_run_on_aten(device, caplog, monkeypatch, ds4c_runs):
    monkeypatch.setattr(backend, "MAX_SPECIALIZATIONS", 2)
    net = _Mlp().to(device).eval()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="ds4c", dynamic=True)
    with caplog.at_level(logging.INFO, logger="ds4c.backend"), torch.no_grad():
        for n in (4, 6, 8, 10, 4):
            x = torch.randn(n, 33, device=device)
            assert_close(compiled(x).cpu(), net(x).cpu())
    assert len(ds4c_runs) == 3  # 4, 6 and 4 again; 8 and 10 ran on ATen
    assert caplog.text.count("met more than 2 input signatures") == 1
    torch._dynamo.reset()


@pytest.mark.parametrize("dynamic", [False, True])
def test_training_gives_eager_gradients(dynamic, device, caplog, ds4c_runs):
    """The forward graph of a training step returns the sizes its backward needs beside its tensors: they
    are constants of a static graph (or of one traced at one signature), which the compiled forward still
    returns in their places."""
    caplog.set_level(logging.WARNING, logger="ds4c.backend")
    torch.manual_seed(random.randint(0, 2**31))
    net = _Mlp().to(device).double()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="ds4c", dynamic=dynamic)
    for n in (5, 11):
        x = torch.randn(n, 33, device=device, dtype=torch.float64, requires_grad=True)
        compiled(x).square().sum().backward()
        got = [x.grad.clone()] + [p.grad.clone() for p in net.parameters()]
        x.grad = None
        net.zero_grad()
        net(x).square().sum().backward()
        want = [x.grad] + [p.grad for p in net.parameters()]
        net.zero_grad()
        for g, w in zip(got, want, strict=True):
            assert_close(g.cpu(), w.cpu())
    assert len(ds4c_runs) >= 4  # the forwards and the backwards ran ds4c
    assert "running this graph on ATen" not in caplog.text
    torch._dynamo.reset()


def test_a_graph_returning_a_constant_is_refused_with_a_clear_error():
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = make_fx(lambda x: (x.sin(), 3))(torch.randn(2))
    with pytest.raises(Ds4cError, match="output is not a tensor"):
        graph_from_fx(gm)


class _WithConstants(nn.Module):
    """Tensors made in forward become constants of the module aot_autograd gives the backend (get_attr
    nodes), as Hugging Face models make an empty KV cache and masks."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x):
        empty = torch.tensor([], device=x.device)  # torch.cat skips a 1-D empty tensor
        h = torch.cat([empty, self.fc(x)], 0)
        return torch.tanh(h * torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, 1.5], device=x.device) + 0.25)


def test_tensor_constants_of_the_graph_become_inputs(device, caplog, ds4c_runs):
    torch.manual_seed(random.randint(0, 2**31))
    net = _WithConstants().to(device).eval()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="ds4c")
    x = torch.randn(5, 6, device=device)
    with caplog.at_level(logging.WARNING, logger="ds4c.backend"), torch.no_grad():
        assert_close(compiled(x).cpu(), net(x).cpu())
    assert "running this graph on ATen" not in caplog.text
    assert len(ds4c_runs) == 1
    torch._dynamo.reset()


class _SplitHalves(nn.Module):
    """A kernel reads one half of a split while the other waits: the split's outputs alias the matmul's
    buffer, which must stay live until the second half is read (GPT-NeoX's split q/k/v and partial rope)."""

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(12, 32), nn.Linear(16, 16)

    def forward(self, x):
        a, b = self.fc(x).split(16, -1)
        return self.fc2(torch.sigmoid(a) * 3.0) + b


def test_a_split_keeps_its_buffer_alive(device, ds4c_runs):
    torch.manual_seed(random.randint(0, 2**31))
    net = _SplitHalves().to(device).eval()
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="ds4c")
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(37, 12, device=device)
            assert_close(compiled(x).cpu(), net(x).cpu())
    assert len(ds4c_runs) == 2
    torch._dynamo.reset()


def test_a_custom_op_runs_as_a_step_between_kernels(device, caplog, ds4c_runs):
    @torch.library.custom_op("ds4c_test::twice", mutates_args=())
    def twice(x: torch.Tensor) -> torch.Tensor:
        return x * 2

    @twice.register_fake
    def _(x):
        return torch.empty_like(x)

    net = nn.Linear(8, 8).to(device).eval()
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: torch.tanh(twice(net(x))), backend="ds4c")
    x = torch.randn(3, 8, device=device)
    with caplog.at_level(logging.WARNING, logger="ds4c.backend"), torch.no_grad():
        assert_close(compiled(x).cpu(), torch.tanh(net(x) * 2).cpu())
    assert "running this graph on ATen" not in caplog.text and len(ds4c_runs) == 1
    torch._dynamo.reset()


def test_a_custom_op_that_writes_its_argument_sends_the_graph_to_aten(device, caplog, ds4c_runs):
    @torch.library.custom_op("ds4c_test::double_", mutates_args=("x",))
    def double_(x: torch.Tensor) -> None:
        x.mul_(2)

    def fn(x):
        y = x + 1
        double_(y)
        return y * 3

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="ds4c")
    x = torch.randn(3, 8, device=device)
    with caplog.at_level(logging.WARNING, logger="ds4c.backend"), torch.no_grad():
        assert_close(compiled(x).cpu(), ((x + 1) * 6).cpu())
    assert "running this graph on ATen" in caplog.text and not ds4c_runs
    torch._dynamo.reset()
