"""torch.compile(..., backend="ds4c") on a small conv net: the convolution has no template and runs on ATen
(logged with the reason), the rest is compiled, and the result equals eager."""

import logging

import torch
from torch import nn

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
