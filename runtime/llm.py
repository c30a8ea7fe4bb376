"""Run a compiled decoder-only LLM plan: a prefill graph (fixed prompt bucket, right-padded) and a decode
graph (one token). On GPUs each is recorded once as a CUDA graph and replayed, so no step costs host time.
The KV cache is plan state shared by both.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from types import ModuleType

import torch

from .executor import Executable
from .graphs import Replay
from .loader import load_file, load_source
from .plan import Plan, PlanError
from .weights import concat_views, derive


def state_tensors(plan: Plan, saved: dict[str, torch.Tensor], device: torch.device,
                  bind: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The plan's state: zero-initialised buffers (KV caches) and saved constants (rope tables). A zeros
    buffer found in bind (a module's own KV cache, by role) is used in place, as torch.compile would."""
    out = {}
    for name, spec in plan.state.items():
        dtype = getattr(torch, spec["dtype"])
        t = (bind or {}).get(name)
        if spec["init"] == "zeros" and t is not None:
            if list(t.shape) != spec["shape"] or t.dtype != dtype or t.device != device or not t.is_contiguous():
                raise PlanError(f"state {name}: the plan wants {spec['shape']} {spec['dtype']} on {device}, "
                                f"got {list(t.shape)} {t.dtype} on {t.device}")
            out[name] = t.zero_()
        elif spec["init"] == "zeros":
            out[name] = torch.zeros(spec["shape"], dtype=dtype, device=device)
        elif name in saved:
            out[name] = saved[name].to(device=device, dtype=dtype)
        else:
            raise PlanError(f"state {name} is missing from state.safetensors")
    return out


def load_kernels(plan: Plan, plan_dir: str | Path | None = None,
                 sources: dict[str, str] | None = None) -> dict[str, ModuleType]:
    """Import every kernel module, from the plan directory or from in-memory sources."""
    mods = {}
    for kid, k in plan.kernels.items():
        mods[kid] = load_source(sources[kid]) if sources is not None else load_file(Path(plan_dir) / k.file)
    return mods


def pdl_supported(device: torch.device) -> bool:
    """Programmatic dependent launch needs a CUDA device of compute capability 9.0 or newer."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9


class LLMRunner:
    """prefill(tokens [1,T], last [1]) and decode(token [1,1], pos [1]) -> logits [1, vocab]."""

    def __init__(self, plan: Plan, kernels: dict[str, ModuleType], weights: dict[str, torch.Tensor],
                 saved_state: dict[str, torch.Tensor], device: torch.device, cuda_graph: bool = True,
                 state: dict[str, torch.Tensor] | None = None, pdl: bool | None = None):
        """weights: by parameter name. Those that are parts of a derived concatenation are replaced by
        views into it, so no bytes are held twice; those the plan reads only through derived weights
        (quantised ones) are let go. self.weights holds the parameters the runner reads.
        state: existing buffers (by role, "buffer:<name>") to use as the plan's zero-initialised state.
        pdl: decode kernels launch as programmatic dependent launches (Hopper+ GPUs only; experimental,
        default off; None reads DS4C_PDL=1 from the environment)."""
        self.plan, self.device = plan, device
        derived = derive(plan.derived, weights)
        read = {role.split(":", 1)[1] for gp in plan.graphs.values() for _, role in gp.inputs
                if role.startswith("param:")}
        views = concat_views(plan.derived, weights, derived)
        self.weights = {k: t for k, t in {**weights, **views}.items() if k in read or k in views}
        values = {f"param:{k}": v for k, v in self.weights.items()}
        values.update({f"derived:{k}": v for k, v in derived.items()})
        self.state = state_tensors(plan, saved_state, device, state)
        values.update(self.state)
        self.prefill_len = int(plan.meta["prefill_len"])
        self._prefill = Executable(plan.graphs["prefill"], kernels, plan.kernels, values, device)
        self.pdl = pdl_supported(device) and (os.environ.get("DS4C_PDL") == "1" if pdl is None else pdl)
        self._decode = Executable(plan.graphs["decode"], kernels, plan.kernels, values, device, pdl=self.pdl)
        self.use_graph = cuda_graph and device.type == "cuda"
        self._replays: dict[str, Replay | None] = {}  # by graph; None: it could not be recorded

    def reset(self) -> None:
        for name, spec in self.plan.state.items():
            if spec["init"] == "zeros":
                self.state[name].zero_()

    def prefill(self, tokens: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Logits [1, vocab] at position last; on a GPU they stay valid until the next prefill."""
        t = tokens.shape[1]
        if t > self.prefill_len:
            raise ValueError(f"prompt of {t} tokens is longer than the compiled bucket {self.prefill_len}")
        if t < self.prefill_len:
            tokens = torch.nn.functional.pad(tokens, (0, self.prefill_len - t))
        return self._run("prefill", self._prefill, tokens.to(self.device), last.to(self.device))

    def decode(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits [1, vocab] after token at pos; on a GPU they stay valid until the next decode."""
        return self._run("decode", self._decode, token.to(self.device), pos.to(self.device))

    def runs_as(self, name: str) -> str:
        """How graph `name` ("prefill", "decode") runs: as one CUDA graph replay, or step by step (no GPU, or
        its recording failed); "not run yet" before its first call on a GPU."""
        if not self.use_graph:
            return "step by step"
        if name not in self._replays:
            return "not run yet"
        return "one CUDA graph replay" if self._replays[name] is not None else "step by step (recording failed)"

    def _run(self, name: str, exe: Executable, *inputs: torch.Tensor) -> torch.Tensor:
        """On a GPU the first call records the graph (see _record), later calls replay it."""
        if self.use_graph and name not in self._replays:
            self._replays[name] = self._record(name, exe, inputs)
        replay = self._replays.get(name)
        return (replay(*inputs) if replay is not None else exe(*inputs))[0]

    def _record(self, name: str, exe: Executable, inputs: tuple) -> Replay | None:
        """Warm up (loads and compiles every kernel) and record the graph; the warm-up runs write the KV cache
        entries of this very call, which the replay writes again identically. None, with a warning, for a
        graph that cannot be recorded (a kernel that syncs with the host): it runs step by step."""
        try:
            return Replay(exe, *inputs)
        except RuntimeError as e:
            warnings.warn(f"ds4c: the {name} graph runs step by step: recording it as a CUDA graph failed ({e})",
                          RuntimeWarning, stacklevel=4)
            return None

    @torch.no_grad()
    def generate(self, ids: list[int], max_new_tokens: int, eos: int | None = None) -> list[int]:
        """Greedy decoding: prefill the prompt, then one decode step per new token."""
        if not ids:
            raise ValueError("empty prompt")
        tokens = torch.tensor([ids], dtype=torch.long, device=self.device)
        last = torch.tensor([len(ids) - 1], dtype=torch.long, device=self.device)
        logits = self.prefill(tokens, last)
        out: list[int] = []
        pos = len(ids)
        for _ in range(max_new_tokens):
            nxt = int(logits[0].float().argmax())
            out.append(nxt)
            if eos is not None and nxt == eos:
                break
            logits = self.decode(torch.tensor([[nxt]], device=self.device),
                                 torch.tensor([pos], device=self.device))
            pos += 1
        return out
