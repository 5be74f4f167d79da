"""The ESP state of one worker: its communicator, and the step being run (worker side).

The worker extension sets the communicator once (``set_communicator``); the ESP runner opens a
step when the step's plan involves this instance (``begin_step``), records each request's
rows in the forward, and builds the step's index tensors once (``StepContext.tensors``); the
attention backend and the layer walk of an idle instance read ``current()``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vllm_esp.ops import dispatch
from vllm_esp.ops.plan import ESPStepPlan
from vllm_esp.ops.step import StepTensors

_comm = None  # (communicator, instance id, device), set when the worker joins the ESP group
_current: "StepContext | None" = None
_kernels: dict[tuple, dispatch.SpanKernels] = {}  # (device type, layout class) -> kernels


@dataclass
class StepContext:
    """What one instance's runner knows about the ESP part of the current step."""

    plan: ESPStepPlan
    instance: int
    comm: object  # ESPCommunicator over the cross-instance group of this TP rank
    device: torch.device = torch.device("cpu")  # of this worker's KV cache and activations
    rows: dict[str, tuple[int, int]] = field(default_factory=dict)  # req id -> [start, end)
    esp_requests: list[int] = field(default_factory=list)  # batch indices ESP computes
    block_size: int | None = None  # the scheduler's block size (the plan's block ids)
    _tensors: StepTensors | None = None

    def tensors(self, block_size: int) -> StepTensors:
        """The step's index tensors, built on first use (after ``rows`` are known).
        ``block_size``: the kernel's, which must be the plan's (the scheduler's)."""
        if self.block_size is not None and block_size != self.block_size:
            raise RuntimeError(f"ESP: the attention kernel's blocks hold {block_size} tokens, "
                               f"the scheduler's {self.block_size}; span attention needs them "
                               f"equal")
        if self._tensors is None:
            self._tensors = StepTensors.build(self.plan, self.instance, self.rows, block_size,
                                              self.device)
        return self._tensors

    def ring_positions(self, index: int):
        return self.plan.rings[index].positions()


def set_communicator(comm, instance: int, device: torch.device | str = "cpu") -> None:
    global _comm
    _comm = (comm, instance, torch.device(device))


def communicator():
    """``(communicator, instance, device)`` of this worker, or None before it joined."""
    return _comm


def kernels_for(device: torch.device, layout) -> dispatch.SpanKernels:
    """The attention backend for this worker's device and cache layout (chosen once)."""
    key = (device.type, type(layout))
    if key not in _kernels:
        _kernels[key] = dispatch.select(device, layout)
    return _kernels[key]


def begin_step(plan: ESPStepPlan | None) -> StepContext | None:
    global _current
    _current = None
    if plan is None or _comm is None or not plan.involves(_comm[1]):
        return None
    _current = StepContext(plan, _comm[1], _comm[0], _comm[2])
    return _current


def end_step() -> None:
    global _current
    _current = None


def current() -> StepContext | None:
    return _current
