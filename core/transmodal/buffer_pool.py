"""Reusable CPU buffers for batches gathered from memory-mapped columns.

A loop over a memory-mapped split gathers a new batch of a few MiB every step. Allocated and freed each time, those
buffers land in glibc's heap once its dynamic mmap threshold has risen past their size (after the first one is
freed), where they fragment it: the process's memory then creeps up over an epoch, by more the longer the epoch.
Reusing a few buffers instead keeps it flat, and saves the page faults of fresh memory.

A buffer is reused only when nothing references it any more: no tensor, view or NumPy array shares its storage,
which is exactly when the storage's reference count is the pool's own one. A batch that is kept (appended to a
list, say) is therefore never overwritten; the next request then gets a fresh buffer outside the pool. One pool
serves every column, so memory-mapped splits that are not being read (the evaluation splits while training) hold
no buffers of their own; it keeps at most :data:`SLOTS` of the largest batches it has served for the life of the
process (4 x 37 MiB for batches of 256 images of 224 px).
"""

from __future__ import annotations

import torch

# batch buffers alive at once in a training step: the source batch it holds and the next one being gathered,
# and the same for the unlabelled target batches beside them
SLOTS = 4
# torch's own reference count of a storage (what its cudagraph trees check before reusing memory); private, so a
# torch without it gets fresh buffers every time: the same batches, only memory that is not flat
_use_count = getattr(torch._C, "_storage_Use_Count", None)


class BufferPool:
    """At most ``slots`` CPU storages, each lent out again once no tensor uses it. Not thread-safe: one thread
    gathers batches, as the loaders do."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._storages: list[torch.UntypedStorage] = []

    def empty(self, shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape``, on a pooled storage that nothing else references."""
        if _use_count is None:
            return torch.empty(shape, dtype=dtype)
        nbytes = shape.numel() * dtype.itemsize
        # a count of 1 is the pool's handle alone: no tensor, view or array of the storage is alive
        free = [slot for slot, storage in enumerate(self._storages) if _use_count(storage._cdata) == 1]
        for slot in free:
            if self._storages[slot].nbytes() >= nbytes:
                return torch.empty(0, dtype=dtype).set_(self._storages[slot], 0, shape)
        tensor = torch.empty(shape, dtype=dtype)
        if len(self._storages) < self.slots:
            self._storages.append(tensor.untyped_storage())
        elif free:  # a free buffer too small for this batch: the larger one takes its place
            smallest = min(free, key=lambda slot: self._storages[slot].nbytes())
            self._storages[smallest] = tensor.untyped_storage()
        return tensor


BATCH_BUFFERS = BufferPool()
