"""The data contract: datasets as in-memory tensors, and batching without per-sample Python.

A dataset factory returns a :class:`DatasetBundle`. Images are uint8 tensors (N, C, H, W); texts arrive as
strings and are numericalised once, for the whole split, by the experiment's tokenizer into int64 ids
(N, T) padded with :data:`PAD_ID`. A batch is then a dict of tensors: each modality under its name,
"label" (B,) and "domain" (B,) where known, and ``present/<modality>`` (B,) bool where some samples lack that
modality (the model passes it to the fusion as the presence mask).

An image column may instead be a :class:`MappedColumn`: rows of a memory-mapped array on disk (the image cache),
gathered one batch at a time, so that a split larger than memory keeps peak memory flat.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from transmodal.buffer_pool import BATCH_BUFFERS
from transmodal.errors import DataError
from transmodal.kinds import ModalityKind, Storage

PAD_ID = 0
UNK_ID = 1
SOURCE_DOMAIN, TARGET_DOMAIN = 0, 1

Batch = dict[str, torch.Tensor]
PRESENT_PREFIX = "present/"


def presence_key(modality: str) -> str:
    """The batch key of ``modality``'s presence mask: (B,) bool, False for samples that lack it."""
    return PRESENT_PREFIX + modality


class MappedColumn:
    """Rows ``rows`` of a memory-mapped array, read only when indexed: ``column[indices]`` gathers one batch.

    A batch is gathered by one ``index_select`` straight into its output, in the requested order: no per-sample
    Python and one copy. Row -1 stands for a sample without this modality and reads as zeros. Batches are written
    into buffers of :data:`~transmodal.buffer_pool.BATCH_BUFFERS`, reused once nothing references them, so that a
    loop over the split allocates nothing per step and a batch that is kept is never overwritten.
    """

    def __init__(self, array: torch.Tensor, rows: torch.Tensor) -> None:
        self.array = array
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.array.shape[1:]))

    def __getitem__(self, indices: torch.Tensor) -> torch.Tensor:
        physical = self.rows[indices]
        shape = torch.Size((len(physical), *self.array.shape[1:]))
        return self._gather(physical, BATCH_BUFFERS.empty(shape, self.array.dtype))

    def _gather(self, physical: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Rows ``physical`` of the array into ``out``, in that order. Reading them sorted by position in the file
        (then a second copy to restore the order) was no faster, not even with the file out of the page cache: a
        batch's rows lie far apart in it."""
        absent = physical < 0
        if not bool(absent.any()):
            torch.index_select(self.array, 0, physical, out=out)
        elif len(self.array):
            torch.index_select(self.array, 0, physical.clamp(min=0), out=out)
            out[absent] = 0
        else:  # no sample has this modality
            out.zero_()
        return out

    def select(self, indices: torch.Tensor) -> MappedColumn:
        """A subset of the rows, still on disk (splitting a dataset reads nothing)."""
        return MappedColumn(self.array, self.rows[indices])

    def load(self) -> torch.Tensor:
        """Every row, read into memory (one copy, never a pooled buffer)."""
        return self._gather(self.rows, torch.empty(self.shape, dtype=self.array.dtype))


@dataclass
class Split:
    """One split of one domain: each modality under its name, plus "label" unless the labels are hidden."""

    data: dict[str, Any]

    def __post_init__(self) -> None:
        sizes = {key: len(value) for key, value in self.data.items()}
        if len(set(sizes.values())) > 1:
            raise DataError(f"split columns have different lengths: {sizes}")

    def __len__(self) -> int:
        return len(next(iter(self.data.values()))) if self.data else 0

    @property
    def has_labels(self) -> bool:
        return "label" in self.data

    def without_labels(self) -> Split:
        return Split({key: value for key, value in self.data.items() if key != "label"})


@dataclass
class DatasetBundle:
    """What a dataset provides: its modalities, classes and splits.

    ``train`` is the labelled (source) training data. ``unlabelled`` is target-domain data whose labels
    training never sees (what domain adaptation uses); ``evaluation`` maps names such as "source/val" and
    "target/test" to labelled splits.
    """

    modalities: dict[str, ModalityKind]
    classes: list[str]
    train: Split
    evaluation: dict[str, Split]
    unlabelled: Split | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.train.has_labels:
            raise DataError("the training split of a dataset must carry labels")
        if len(self.classes) < 2:
            found = f"only one class, '{self.classes[0]}'" if self.classes else "no class"
            raise DataError(f"the dataset has {found}; classification needs at least two: check that its labels "
                            f"(the label column, or the class folders) name every class")
        if self.unlabelled is not None and self.unlabelled.has_labels:
            self.unlabelled = self.unlabelled.without_labels()


@dataclass
class ModalitySpec:
    """What an encoder factory learns about the modality it encodes."""

    name: str
    kind: ModalityKind
    shape: tuple[int, ...] = ()  # per-sample shape: (C, H, W) for images, (D,) for vectors
    vocab_size: int = 0  # text only
    tokenizer: Any = None  # text only: the fitted Tokenizer (for pretrained word vectors)
    extras: dict[str, Any] = field(default_factory=dict)
    # True when a trained run's weights are loaded into the encoder right after it is built: factories then skip
    # reading pretrained weights or word vectors, files (or downloads) that a saved run no longer needs.
    from_checkpoint: bool = False


Column = torch.Tensor | MappedColumn


def select_rows(column: MappedColumn, rows: torch.Tensor, storage: Storage) -> Column:
    """The rows of one split: left on disk (``mmap``) or read into memory once."""
    selected = column.select(rows)
    return selected if storage == "mmap" else selected.load()


def split_columns(split: Split, keys: list[str]) -> dict[str, Column]:
    """The tensor (or memory-mapped) columns of a split that a loader serves, in a fixed order."""
    missing = [key for key in keys if key not in split.data]
    if missing:
        raise DataError(f"split lacks {missing}; it has {sorted(split.data)}")
    columns = {key: split.data[key] for key in keys}
    for key, value in columns.items():
        if not isinstance(value, torch.Tensor | MappedColumn):
            raise DataError(f"column '{key}' must be a tensor by now (texts are tokenised first), got {type(value)}")
    return columns


class BatchLoader:
    """Serves batches from tensors (or memory-mapped columns) by index: no per-sample Python, no worker processes.

    The order of an epoch depends only on (seed, epoch), so a resumed run sees the same batches as one that
    never stopped. Text columns are trimmed to the longest sample of each batch; with
    ``bucket`` the samples of a window of batches are grouped by length so that little padding remains.
    """

    def __init__(
        self,
        columns: Mapping[str, Column],
        batch_size: int,
        shuffle: bool,
        drop_last: bool = False,
        seed: int = 0,
        text_keys: tuple[str, ...] = (),
        bucket: bool = False,
        bucket_window: int = 50,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.columns = dict(columns)
        self.size = len(next(iter(self.columns.values())))
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last and self.size >= batch_size
        self.seed = seed
        self.text_keys = text_keys
        self.bucket = bucket and bool(text_keys)
        self.bucket_window = bucket_window
        self._lengths = (
            {key: (self.columns[key] != PAD_ID).sum(dim=1) for key in text_keys} if text_keys else {}
        )
        self.rank, self.world_size = 0, 1

    def shard(self, rank: int, world_size: int) -> None:
        """Serve rank ``rank``'s share of each batch: every ``world_size``-th sample of it from the ``rank``-th.
        The batches themselves (``batch_size`` is global) and their order stay those of one process, so the ranks
        together train on exactly the batches one process would."""
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        if self.drop_last:
            return self.size // self.batch_size
        return -(-self.size // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.size, generator=generator)
        if self.bucket:
            order = self._bucketed(order, generator)
        return order

    def _bucketed(self, order: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        lengths = self._lengths[self.text_keys[0]][order]
        window = self.batch_size * self.bucket_window
        chunks = []
        for start in range(0, self.size, window):
            chunk = order[start : start + window]
            chunks.append(chunk[torch.argsort(lengths[start : start + window], stable=True)])
        order = torch.cat(chunks)
        batches = list(order.split(self.batch_size))
        permutation = torch.randperm(len(batches), generator=generator).tolist()
        return torch.cat([batches[i] for i in permutation])

    def epoch(self, epoch: int = 0, start: int = 0, whole: bool = False) -> Iterator[Batch]:
        """This rank's share of the batches of ``epoch`` from the ``start``-th on (a run resumed mid-epoch skips
        those it trained on); with ``whole``, the whole batches. A share left empty (a short last batch) is skipped."""
        order = self.order(epoch)
        for index in range(start, len(self)):
            indices = order[index * self.batch_size : (index + 1) * self.batch_size]
            if not whole:
                indices = indices[self.rank :: self.world_size]
            if len(indices):
                yield self.batch(indices)

    def batch(self, indices: torch.Tensor) -> Batch:
        batch = {key: column[indices] for key, column in self.columns.items()}
        for key in self.text_keys:
            longest = int(self._lengths[key][indices].max().clamp(min=1))
            batch[key] = batch[key][:, :longest]
        return batch

    def stream(self, start: int = 0) -> Iterator[Batch]:
        """Batches without end, from the ``start``-th of the sequence epoch 0, epoch 1, ... (for unlabelled
        target batches beside the source loader; a resumed run restarts the stream where it stood)."""
        epoch, skip = divmod(start, len(self))
        while True:
            order = self.order(epoch)
            for index in range(skip, len(self)):
                indices = order[index * self.batch_size : (index + 1) * self.batch_size]
                yield self.batch(indices[self.rank :: self.world_size])
            epoch, skip = epoch + 1, 0


def joint_batch(source: Batch, target: Batch, modalities: list[str]) -> Batch:
    """One batch of the source rows then the target rows of ``modalities``, with presence masks where either
    has them: the joint pass of a training step."""
    joint = {m: _concat_padded(source[m], target[m]) for m in modalities}
    for m in modalities:
        if presence_key(m) in source or presence_key(m) in target:
            joint[presence_key(m)] = torch.cat([_presence(source, m), _presence(target, m)])
    return joint


def _presence(batch: Batch, modality: str) -> torch.Tensor:
    """The batch's presence mask of ``modality``; all present when the batch has none."""
    if presence_key(modality) in batch:
        return batch[presence_key(modality)]
    return torch.ones(batch[modality].shape[0], dtype=torch.bool, device=batch[modality].device)


def _concat_padded(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Concatenate along the batch; token id tensors of different lengths are padded to the longer."""
    if first.dim() == 2 and first.dtype == torch.int64 and first.shape[1] != second.shape[1]:
        width = max(first.shape[1], second.shape[1])
        first = nn.functional.pad(first, (0, width - first.shape[1]), value=PAD_ID)
        second = nn.functional.pad(second, (0, width - second.shape[1]), value=PAD_ID)
    return torch.cat([first, second])


def move_batch(batch: Batch, device: torch.device, non_blocking: bool = True) -> Batch:
    return {key: value.to(device, non_blocking=non_blocking) for key, value in batch.items()}
