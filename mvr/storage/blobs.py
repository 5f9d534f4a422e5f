"""Texts and titles on disk: UTF-8 strings appended to ``NAME.bin`` with their byte offsets in
``NAME_offsets.npy``, read back through a memory map."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class BlobWriter:
    """Appends UTF-8 strings to ``NAME.bin`` and keeps their byte offsets."""

    def __init__(self, folder: Path, name: str):
        self.name = name
        self.folder = folder
        self.handle = open(folder / f"{name}.bin", "wb")
        self.offsets = [0]

    def add(self, value: str) -> None:
        data = value.encode("utf-8")
        self.handle.write(data)
        self.offsets.append(self.offsets[-1] + len(data))

    def close(self) -> None:
        self.handle.close()
        np.save(self.folder / f"{self.name}_offsets.npy", np.asarray(self.offsets, dtype=np.int64))


class Blob:
    """Read side of :class:`BlobWriter`: ``blob[i]`` is the i-th string."""

    def __init__(self, folder: Path, name: str):
        self.offsets = np.load(folder / f"{name}_offsets.npy", mmap_mode="r")
        size = int(self.offsets[-1])
        self.data = np.memmap(folder / f"{name}.bin", dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def __getitem__(self, i: int) -> str:
        return bytes(self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]).decode("utf-8")

    def __len__(self) -> int:
        return len(self.offsets) - 1
