"""Peak memory of a piece of CPU work, read from the allocator through the PyTorch profiler.

PyTorch has no CPU counterpart of ``torch.cuda.max_memory_allocated``.  With
``profile_memory=True`` the profiler records every allocation and free of the c10 CPU
allocator, each with the allocator's running total of live bytes (``total_allocated``).
The highest total during the work, less the total when it started, is the memory the
work needed on top of what already existed (parameters, inputs): activations saved for
backward, gradients, and kernels' temporary buffers alike, because they all come from the
same allocator.  Python objects and the allocator's own slack are not counted; neither
differs between the variants compared here.  A block allocated before the process's first
profiling session is unknown to the profiler and its free is not subtracted, so the
benchmark releases gradients at the end of each step rather than at the start of the next.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from torch._C._profiler import _EventType
from torch.profiler import ProfilerActivity, profile

__all__ = ["peak_allocated_bytes"]


def _allocations(nodes: Iterable[Any]) -> Iterable[tuple[int, int, int]]:
    """(time, bytes allocated (negative: freed), allocator total after it) of every CPU
    allocation event in a profiler event tree."""
    stack = list(nodes)
    while stack:
        node = stack.pop()
        fields = node.extra_fields
        if node.tag == _EventType.Allocation and fields.device.type == "cpu":
            yield node.start_time_ns, fields.alloc_size, fields.total_allocated
        stack.extend(node.children)


def peak_allocated_bytes(work: Callable[[], object]) -> int:
    """Run ``work()`` once and return the peak of CPU memory it held, in bytes.

    The allocator's running total is not reset between profiling sessions, so the peak is
    taken relative to the total just before the first event of this one.

    Args:
        work: the code to measure, e.g. one training step.

    Returns:
        The largest number of bytes allocated during ``work`` and not yet freed, counted
        from when it started (memory that already existed is not included).
    """
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        work()
    events = sorted(_allocations(prof.profiler.kineto_results.experimental_event_tree()))
    if not events:
        return 0
    _, first_size, first_total = events[0]
    start = first_total - first_size
    return max(0, max(total for _, _, total in events) - start)
