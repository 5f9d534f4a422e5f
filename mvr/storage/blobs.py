"""Texts and titles on disk: UTF-8 strings appended to ``NAME.bin`` with their byte offsets in
``NAME_offsets.npy``, read back through a memory map."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..threads import load_npy, read_npy_header


class BlobWriter:
    """Appends UTF-8 strings to ``NAME.bin`` and keeps their byte offsets; ``lengths``: the byte
    lengths of the strings the file holds already (a resumed build), after which it goes on."""

    def __init__(self, folder: Path, name: str, lengths: np.ndarray | None = None):
        self.name = name
        self.folder = folder
        held = len(lengths) if lengths is not None else 0
        self.handle = open(folder / f"{name}.bin", "ab" if held else "wb")
        self.offsets = [0, *np.cumsum(lengths).tolist()] if held else [0]

    def add(self, value: str) -> None:
        data = value.encode("utf-8")
        self.handle.write(data)
        self.offsets.append(self.offsets[-1] + len(data))

    def close(self) -> None:
        self.handle.close()
        np.save(self.folder / f"{self.name}_offsets.npy", np.asarray(self.offsets, dtype=np.int64))


class ArrayWriter:
    """Appends rows to a ``.npy`` file of unknown final length: the header is written first with
    room to spare and again, with the row count, by :meth:`close`."""

    HEADER = 128  # bytes, magic and length included; numpy reads any header padded with spaces

    def __init__(self, path: Path, dtype, row_shape: tuple = ()):
        self.path, self.dtype, self.row_shape = Path(path), np.dtype(dtype), tuple(row_shape)
        self.rows = 0
        self.handle = open(self.path, "wb")
        self.handle.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        described = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False, "shape": (rows, *self.row_shape)}
        text = repr(described).encode("latin1")
        room = self.HEADER - 10
        if len(text) >= room:
            raise ValueError(f"a .npy header for shape {(rows, *self.row_shape)} does not fit in {self.HEADER} bytes")
        return b"\x93NUMPY\x01\x00" + room.to_bytes(2, "little") + text.ljust(room - 1) + b"\n"

    def add(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows)
        if not np.can_cast(rows.dtype, self.dtype, "same_kind"):
            raise ValueError(f"{self.path.name}: rows of {rows.dtype} do not fit {self.dtype}")
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path.name}: rows of shape {rows.shape[1:]}, expected {self.row_shape}")
        self.handle.write(rows.tobytes())
        self.rows += len(rows)

    def add_file(self, path: Path, rows: int) -> None:
        """Append the first ``rows`` rows of the headerless file ``path`` (of this writer's dtype and
        row shape), copied by the kernel where it can (``copy_file_range``: no pass through Python)."""
        size = rows * self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        with open(path, "rb") as source:
            if os.fstat(source.fileno()).st_size < size:
                raise ValueError(f"{Path(path).name} holds fewer than {rows} rows")
            self.handle.flush()
            start, copied = self.handle.tell(), 0
            try:
                while copied < size and (done := os.copy_file_range(source.fileno(), self.handle.fileno(), size - copied, copied)):
                    copied += done
            except (AttributeError, OSError):  # not Linux, or a file system that cannot: the rest through Python
                pass
            self.handle.seek(start + copied)  # (where the copy says, whatever a failed call may have left past it)
            self.handle.truncate()
            source.seek(copied)
            while copied < size:
                block = source.read(min(1 << 24, size - copied))
                if not block:
                    raise ValueError(f"{Path(path).name} was cut while it was read")
                self.handle.write(block)
                copied += len(block)
        self.rows += rows

    def close(self) -> None:
        self.handle.seek(0)
        self.handle.write(self._header(self.rows))
        self.handle.close()


class RowReader:
    """Rows of a ``.npy`` file (``dtype`` None) or of a headerless file of ``dtype`` rows shaped
    ``row_shape``, read on demand into fresh arrays (a slice, or sorted row numbers), never
    memory-mapped: a pass over a file larger than memory holds only the rows in hand, and the
    pages read do not stay in the process's resident set."""

    def __init__(self, path: Path, dtype=None, row_shape: tuple = ()):
        self.path = Path(path)
        if dtype is None:
            with open(self.path, "rb") as handle:
                shape, fortran, dtype = read_npy_header(handle)
                self.offset = handle.tell()
            if fortran:
                raise ValueError(f"{self.path.name}: a Fortran-ordered array; mvr writes C order")
            rows, row_shape = (shape[0] if shape else 1), tuple(shape[1:])
        else:
            self.offset, row_shape = 0, tuple(row_shape)
        self.dtype, self.row_shape = np.dtype(dtype), row_shape
        self.row_items = int(np.prod(row_shape, dtype=np.int64))
        self.row_bytes = self.dtype.itemsize * self.row_items
        if dtype is not None or not shape:
            rows = (self.path.stat().st_size - self.offset) // max(self.row_bytes, 1)
        self.shape = (int(rows), *row_shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise ValueError("RowReader reads runs of rows (step 1)")
            count = max(stop - start, 0)
            return np.fromfile(self.path, dtype=self.dtype, count=count * self.row_items, offset=self.offset + start * self.row_bytes).reshape(count, *self.row_shape)
        rows = np.asarray(key, dtype=np.int64)
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        with open(self.path, "rb") as handle:
            for i, row in enumerate(rows):
                out[i] = np.frombuffer(os.pread(handle.fileno(), self.row_bytes, self.offset + int(row) * self.row_bytes), dtype=self.dtype).reshape(self.row_shape)
        return out


class Blob:
    """Read side of :class:`BlobWriter`: ``blob[i]`` is the i-th string."""

    def __init__(self, folder: Path, name: str):
        self.offsets = load_npy(folder / f"{name}_offsets.npy", mmap_mode="r")
        size = int(self.offsets[-1])
        self.data = np.memmap(folder / f"{name}.bin", dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def __getitem__(self, i: int) -> str:
        return bytes(self.data[int(self.offsets[i]) : int(self.offsets[i + 1])]).decode("utf-8")

    def __len__(self) -> int:
        return len(self.offsets) - 1
