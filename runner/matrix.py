"""Corpus embeddings larger than memory: a float32 matrix in a ``.npy`` file, written and searched a block at a time.

What ``eval.memory_mb`` turns a corpus's embeddings into when the whole matrix would exceed it. Encoding appends
blocks to the file; exact top-k reads it block by block (plain reads into one block's buffer, not a memory map,
so the pages read do not stay in the process's resident memory) and merges each block's top k into a running
top k, which gives the same result as one search over the whole matrix. The file is numpy's own format
(``numpy.load`` opens it).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_DTYPE = "<f4"
QUERY_CHUNK = 1024
"""Queries scored against a block at a time (as :func:`runner.evaluate.top_k`)."""


def block_rows(memory_mb: float, dim: int, queries: int = QUERY_CHUNK) -> int:
    """Rows of a block that fits `memory_mb`: the block itself and one query chunk's scores against it.

    Args:
        memory_mb: Memory budget in MiB (``eval.memory_mb``).
        dim: Embedding dimension.
        queries: Queries scored at once (their scores are a queries x rows matrix).

    Returns:
        At least 1.

    """
    per_row = 4 * (dim + min(queries, QUERY_CHUNK))
    return max(1, int(memory_mb * 2**20) // per_row)


def matrix_bytes(rows: int, dim: int) -> int:
    """Bytes of a (rows, dim) float32 matrix."""
    return rows * dim * 4


class DiskMatrix:
    """A (rows, dim) float32 matrix in a ``.npy`` file, read a block of rows at a time.

    Args:
        path: The file.
        block: Rows per block read by :meth:`blocks`.
        temporary: Delete the file when this object is garbage collected (a tuned model's embeddings, which no
            later run reuses); False keeps it (the base model's embedding cache).

    """

    def __init__(self, path: Path, *, block: int, temporary: bool = False) -> None:
        import numpy as np

        self.path = Path(path)
        self.block = block
        with self.path.open("rb") as f:
            major, _ = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self._offset = f.tell()
        if len(shape) != 2 or fortran or dtype != np.dtype(_DTYPE):
            raise ValueError(f"{self.path}: not a C-ordered float32 matrix ({shape}, {dtype})")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        expected = self._offset + matrix_bytes(*self.shape)
        if self.path.stat().st_size != expected:
            raise ValueError(f"{self.path}: {self.path.stat().st_size} bytes, a {self.shape} matrix needs {expected}")
        if temporary:
            weakref.finalize(self, Path.unlink, self.path, missing_ok=True)

    @classmethod
    def write(
        cls, path: Path, blocks: Iterable[torch.Tensor], *, rows: int, dim: int, block: int, temporary: bool = False
    ) -> DiskMatrix:
        """Write row blocks, in order, into `path` (through a temporary file renamed at the end: never half-written).

        Args:
            path: The ``.npy`` file to create.
            blocks: (n_i, dim) tensors whose rows add up to `rows`.
            rows: Rows of the matrix.
            dim: Its columns.
            block: Rows per block when read back.
            temporary: See the class.

        Raises:
            ValueError: The blocks do not add up to (rows, dim).

        """
        import numpy as np

        path = Path(path)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        written = 0
        try:
            with tmp.open("wb") as f:
                header = {"descr": _DTYPE, "fortran_order": False, "shape": (rows, dim)}
                np.lib.format.write_array_header_1_0(f, header)
                for part in blocks:
                    values = part.detach().float().cpu().numpy().astype(_DTYPE, copy=False)
                    if values.ndim != 2 or values.shape[1] != dim:
                        raise ValueError(f"a block of shape {values.shape} in a matrix of {dim} columns")
                    f.write(np.ascontiguousarray(values).tobytes())
                    written += values.shape[0]
            if written != rows:
                raise ValueError(f"{written} rows written, {rows} expected")
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)
        return cls(path, block=block, temporary=temporary)

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(first row, (n, dim) float32 CPU tensor) for consecutive blocks of :attr:`block` rows."""
        import numpy as np
        import torch

        rows, dim = self.shape
        with self.path.open("rb") as f:
            f.seek(self._offset)
            for start in range(0, rows, self.block):
                n = min(self.block, rows - start)
                values = np.fromfile(f, dtype=_DTYPE, count=n * dim).reshape(n, dim)
                yield start, torch.from_numpy(values)

    def take(self, rows: list[int]) -> torch.Tensor:
        """The given rows, in the given order (one read per distinct row)."""
        import numpy as np
        import torch

        dim = self.shape[1]
        out = np.empty((len(rows), dim), dtype=_DTYPE)
        with self.path.open("rb") as f:
            for i, row in enumerate(rows):
                f.seek(self._offset + row * dim * 4)
                out[i] = np.fromfile(f, dtype=_DTYPE, count=dim)
        return torch.from_numpy(out)


def iter_blocks(matrix: torch.Tensor | DiskMatrix, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, block) over either kind of matrix; a tensor in blocks of `rows`, a DiskMatrix in its own."""
    if isinstance(matrix, DiskMatrix):
        yield from matrix.blocks()
        return
    for start in range(0, matrix.shape[0], rows):
        yield start, matrix[start : start + rows]


def gather(matrix: torch.Tensor | DiskMatrix, rows: list[int]) -> torch.Tensor:
    """The given rows of either kind of matrix, as a tensor (on the tensor's device; on the CPU from disk)."""
    if isinstance(matrix, DiskMatrix):
        return matrix.take(rows)
    return matrix[rows]
