"""A plan step names the torch operator it calls; resolving the name gives that operator or a PlanError,
never any other Python object (a plan file is data)."""

import pytest
import torch

from ds4c.runtime.executor import resolve_op
from ds4c.runtime.plan import PlanError


@torch.library.custom_op("ds4c_resolve_test::scale", mutates_args=())
def _scale(x: torch.Tensor) -> torch.Tensor:
    return x * 3


def test_aten_and_registered_custom_ops_resolve():
    assert resolve_op("aten.mm.default") is torch.ops.aten.mm.default
    x = torch.randn(4)
    assert torch.equal(resolve_op("ds4c_resolve_test.scale.default")(x), x * 3)


@pytest.mark.parametrize("name", [
    "aten.no_such_op.default",  # not in this torch
    "unimported_lib.op.default",  # a namespace nothing registered
    "aten.__class__.__init__",  # attributes that are no operators
    "aten.mm.__call__",
    "builtins.eval.default",
    "os.system",  # not <namespace>.<op>.<overload>
    "aten.mm.default; import os",
])
def test_anything_else_is_a_plan_error(name):
    with pytest.raises(PlanError):
        resolve_op(name)
