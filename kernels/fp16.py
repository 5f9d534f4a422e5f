"""IEEE half-precision decoding inside Numba, which has no float16 type on the CPU: each uint16 is
converted by LLVM's own ``fpext half`` (:func:`kernels.simd.half_to_float`), which the compiler
vectorises into F16C ``vcvtph2ps``. Exact for every half, infinities and NaN included.
"""

from numba import njit

from .simd import half_to_float


@njit(inline="always", fastmath=True, nogil=True)
def decode_rows(codes, start, stop, out):
    """Decode rows ``start:stop`` of a ``(n, dim)`` uint16 array into the float32 buffer ``out``
    (at least ``(stop - start) * dim`` long); returns the ``(stop - start, dim)`` view of it."""
    dim = codes.shape[1]
    flat = codes[start:stop].ravel()  # the rows are contiguous: one flat loop the compiler vectorises
    n = flat.shape[0]
    for i in range(n):
        out[i] = half_to_float(flat[i])
    return out[:n].reshape((stop - start, dim))
