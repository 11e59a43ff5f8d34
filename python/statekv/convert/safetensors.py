"""Safetensors checkpoints read with numpy (no torch): names, shapes and float32 data."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import ConversionError

__all__ = ["SafetensorsIndex"]

_ST_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),  # converted below
}


@dataclass
class _StEntry:
    file: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


class SafetensorsIndex:
    """Tensor names, shapes and lazily loaded float32 data of a checkpoint's safetensors files."""

    def __init__(self, hf_dir: Path):
        self.dir = hf_dir
        self.entries: dict[str, _StEntry] = {}
        files = self._find_files(hf_dir)
        for f in files:
            self._read_header(f)

    @staticmethod
    def _find_files(hf_dir: Path) -> list[Path]:
        index = hf_dir / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ConversionError(f"{index}: malformed safetensors index ({e}); expected a JSON "
                                      "object with a 'weight_map'") from None
            files = []
            for name in dict.fromkeys(weight_map.values()):
                p = hf_dir / name
                if not p.is_file():
                    raise FileNotFoundError(f"{p}: shard listed in {index.name} is missing")
                files.append(p)
            return files
        files = sorted(p for p in hf_dir.glob("model*.safetensors") if p.is_file())
        if files:
            return files
        bins = sorted(hf_dir.glob("pytorch_model*.bin"))
        if bins:
            raise ConversionError(
                f"{bins[0]}: PyTorch .bin checkpoints are not supported; expected model.safetensors "
                "(re-save the model with save_pretrained(..., safe_serialization=True))")
        raise FileNotFoundError(
            f"{hf_dir}: no weights found (expected model.safetensors or model.safetensors.index.json "
            "with its shards)")

    def _read_header(self, path: Path) -> None:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ConversionError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            n = int.from_bytes(head, "little")
            if n <= 0 or 8 + n > size:
                raise ConversionError(f"{path}: not a safetensors file (bad header length {n})")
            try:
                header = json.loads(f.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ConversionError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape, (b, e) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
            except (KeyError, TypeError, ValueError):
                raise ConversionError(f"{path}: malformed header entry for tensor {name!r}") from None
            if base + e > size:
                raise ConversionError(f"{path}: tensor {name!r} extends past the end of the file (truncated?)")
            if name in self.entries:
                raise ConversionError(f"{path}: tensor {name!r} also appears in {self.entries[name].file.name}")
            self.entries[name] = _StEntry(path, dtype, shape, base + b, base + e)

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def dtype(self, name: str) -> str:
        return self.entries[name].dtype

    def load(self, name: str) -> np.ndarray:
        """The tensor as a float32 numpy array (a fresh array, not a view of the file)."""
        e = self.entries[name]
        np_dtype = _ST_DTYPES.get(e.dtype)
        if np_dtype is None:
            raise ConversionError(f"{e.file}: tensor {name!r} has dtype {e.dtype}, expected one of "
                                  f"{sorted(_ST_DTYPES)} (quantized checkpoints are not supported)")
        count = math.prod(e.shape)
        if (e.end - e.start) != count * np_dtype.itemsize:
            raise ConversionError(f"{e.file}: tensor {name!r} has {e.end - e.start} bytes, expected "
                                  f"{count * np_dtype.itemsize} for {e.dtype}{list(e.shape)}")
        raw = np.fromfile(e.file, dtype=np_dtype, count=count, offset=e.start).reshape(e.shape)
        if e.dtype == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False)
