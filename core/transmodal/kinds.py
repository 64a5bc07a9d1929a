"""Names shared by data containers and parameter models; torch-free, so parameter models can use them without
importing torch (the CLI's listing and validation commands never do)."""

from __future__ import annotations

from typing import Literal

ModalityKind = Literal["image", "text", "vector", "tabular"]
Storage = Literal["memory", "mmap"]  # where a dataset keeps decoded images: in RAM, or mapped from the cache file
