"""Stand-ins for a GPU's memory, for the tests of the memory probe and out-of-memory halving on a CPU."""

from __future__ import annotations

import torch


class FakeMemory:
    """A device of ``free`` bytes where a pass costs ``fixed + per_row · rows``.

    The rows of a pass are read from the input of every module the pass runs (so any model, also one built inside
    a worker, is seen), or reported by :meth:`allocate` when a test's trial runs no model.
    """

    def __init__(self, free: int, per_row: int, per_row_with_grad: int | None = None, fixed: int = 0):
        self.free, self.fixed = free, fixed
        self.per_row, self.per_row_with_grad = per_row, per_row_with_grad or per_row
        self.rows_seen: list[tuple[int, bool]] = []

    def allocate(self, rows: int, grad: bool = False) -> None:
        self.rows_seen.append((rows, grad))

    def free_bytes(self) -> int:
        return self.free

    def peak_bytes(self, run) -> int:
        self.rows_seen.clear()
        handle = torch.nn.modules.module.register_module_forward_pre_hook(self._see)
        try:
            run()
        finally:
            handle.remove()
        rows, grad = max(self.rows_seen)
        return self.fixed + rows * (self.per_row_with_grad if grad else self.per_row)

    def _see(self, module, args) -> None:
        if args and isinstance(args[0], torch.Tensor) and args[0].dim() == 4:
            self.rows_seen.append((args[0].shape[0], torch.is_grad_enabled()))


class RefusesBigBatches(torch.nn.Module):
    """Wraps a net; a forward of more than ``limit`` rows raises the CUDA out-of-memory error."""

    def __init__(self, net: torch.nn.Module, limit: int):
        super().__init__()
        self.net, self.limit, self.batches = net, limit, []

    def forward(self, x):
        self.batches.append(x.shape[0])
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)
