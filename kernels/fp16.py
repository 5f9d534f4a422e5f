"""IEEE half-precision decoding inside Numba, which has no float16 type on the CPU.

A half ``h`` becomes the float32 whose bits are ``(h & 0x7fff) << 13`` (exponent and mantissa
moved into place) times 2**112 (re-biasing the exponent from 15 to 127), with the sign bit moved
to bit 31. The multiply also turns half subnormals into the right float32 values. Infinities and
NaN are not preserved; the index never stores them (the writer rejects non-finite vectors).
"""

import numpy as np
from numba import njit

_REBIAS = np.float32(2.0**112)


@njit(inline="always", fastmath=True, nogil=True)
def decode_rows(codes, start, stop, out_bits):
    """Decode rows ``start:stop`` of a ``(n, dim)`` uint16 array into ``(stop - start, dim)`` float32.

    ``out_bits`` is a uint32 scratch buffer of at least ``(stop - start) * dim`` entries; the
    result is a float32 view of it, valid until the buffer is reused.
    """
    dim = codes.shape[1]
    flat = codes[start:stop].ravel()  # the rows are contiguous: one flat loop the compiler vectorises
    n = flat.shape[0]
    for i in range(n):
        h = np.uint32(flat[i])
        out_bits[i] = ((h & np.uint32(0x7FFF)) << np.uint32(13)) | ((h & np.uint32(0x8000)) << np.uint32(16))
    values = out_bits[:n].view(np.float32)
    for i in range(n):
        values[i] *= _REBIAS
    return values.reshape((stop - start, dim))
