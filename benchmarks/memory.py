"""Peak memory of a piece of CPU work, read from the allocator through the PyTorch profiler.

PyTorch has no CPU counterpart of ``torch.cuda.max_memory_allocated``.  With
``profile_memory=True`` the profiler records every allocation and free of the c10 CPU
allocator together with the bytes it holds at that moment (``total_allocated``), counting
only blocks allocated after profiling started.  The maximum of that running total is the
peak of memory the work allocated on top of what already existed (parameters, inputs):
activations saved for backward, gradients, and kernels' temporary buffers alike, because
they all come from the same allocator.  Python objects and the allocator's own slack are
not counted; neither differs between the variants compared here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

__all__ = ["peak_allocated_bytes"]


def _allocation_totals(nodes: Iterable[Any]) -> Iterable[int]:
    """``total_allocated`` after every CPU allocation event in a profiler event tree."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            yield node.extra_fields.total_allocated
        stack.extend(node.children)


def peak_allocated_bytes(work: Callable[[], object]) -> int:
    """Run ``work()`` once and return the peak of CPU memory it held, in bytes.

    Args:
        work: the code to measure, e.g. one training step.

    Returns:
        The largest number of bytes allocated during ``work`` and not yet freed, counted
        from when it started (memory that already existed is not included).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    return max(_allocation_totals(prof.profiler.kineto_results.experimental_event_tree()), default=0)
