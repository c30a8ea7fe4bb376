"""Code generation targets: how a kernel problem becomes source the runtime can load. Everything above this
interface (IR, passes, lowering, tuning keys) speaks of templates and problems only; a target decides what
the source is. Triton is the one target today, natively on GPUs and under its interpreter on CPUs; a
TVM-based CPU target would implement the same two methods."""

from __future__ import annotations

from typing import Protocol

from ds4c import kernel_templates


class Target(Protocol):
    name: str

    def source(self, template: str, problem: dict) -> str:
        """Module text defining launch(*outputs, *inputs, **kwargs) for this problem."""

    def launch_kwargs(self, template: str, problem: dict) -> dict:
        """The problem scalars launch takes besides tensors and the tuned config."""


class TritonTarget:
    """Renders the Jinja2 Triton templates of kernel_templates/."""

    name = "triton"

    def source(self, template: str, problem: dict) -> str:
        return kernel_templates.get(template).source(problem)

    def launch_kwargs(self, template: str, problem: dict) -> dict:
        return dict(kernel_templates.get(template).launch_kwargs(problem))


TRITON = TritonTarget()
