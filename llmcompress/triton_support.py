"""Triton, when installed (CUDA builds of torch ship it), and a per-path on/off switch.

Kernels in llmcompress are optional fast paths: each module asks ``Switch.available()``
before choosing its kernel and calls ``Switch.disable()`` when the kernel fails to compile or
launch on this machine, so the rest of the process uses the torch path.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None


class Switch:
    """Whether one Triton-backed path may be used in this process."""

    def __init__(self) -> None:
        self.disabled = False

    def available(self) -> bool:
        return triton is not None and not self.disabled

    def disable(self) -> None:
        self.disabled = True
