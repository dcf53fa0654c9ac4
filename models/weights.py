"""Reading weight files without trusting them: safetensors, or ``torch.load(weights_only=True)``.

A pickled checkpoint may hold code; safe loading unpickles only tensors, plain containers and the
types a caller names (``safe_globals``, e.g. numpy scalars). A file that safe loading refuses is
loaded with full unpickling only when the caller allows it (``--allow_pickle``, for trusted files).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class WeightsFileError(ValueError):
    """A weight file is unreadable, or safe loading refuses it; the message names the file."""


def read_weights_file(path: str | Path, allow_pickle: bool = False, safe_globals: Sequence = ()) -> Any:
    """What the file at ``path`` holds, on the CPU (zip checkpoints memory-mapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except Exception as error:  # safetensors raises its own error type for bad headers
            raise WeightsFileError(f"{path}: not a readable safetensors file ({error})") from None
    try:
        with torch.serialization.safe_globals(list(safe_globals)):
            return _torch_load(path, weights_only=not allow_pickle)
    except Exception as error:  # noqa: BLE001 - unpickling raises anything; report one line
        raise _load_error(path, error, allow_pickle) from None


def _torch_load(path: Path, weights_only: bool) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError:  # not a zip archive: legacy files cannot be memory-mapped
        return torch.load(path, map_location="cpu", weights_only=weights_only)


def _load_error(path: Path, error: Exception, allow_pickle: bool) -> WeightsFileError:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    unsupported = [line[line.index("Unsupported"):].split(" was not ", 1)[0] for line in lines
                   if "Unsupported" in line]
    if not allow_pickle and unsupported and unsupported[0].startswith("Unsupported global"):
        return WeightsFileError(f"{path}: refused by safe loading, it needs pickle ({unsupported[0]}); if you "
                                f"trust the file, pass --allow_pickle")
    return WeightsFileError(f"{path}: not a readable checkpoint ({(unsupported or lines)[0]})")
