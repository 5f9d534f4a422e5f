"""Vector building blocks for the MaxSim kernels, written in LLVM IR through Numba intrinsics.

Numba has no float16 type on the CPU and no way to say "keep these twelve vectors in registers";
LLVM has both. Two intrinsics fill the gap:

``half_to_float(bits)``
    A uint16 holding IEEE half-precision bits, as float32 (LLVM ``fpext half``). In a loop the
    compiler turns it into ``vcvtph2ps``, eight values per instruction on F16C machines (on a CPU
    without F16C, integer bit moves and a multiply do it instead).

``score_rows(qt, q_off, lanes, n_query, rows, r_off, n_rows, dim, best)``
    MaxSim of one query against ``n_rows`` float32 document rows, as an outer-product micro-kernel
    (the register tiling of a BLAS GEMM, with max in place of the sum over document tokens). The
    query is packed once by :func:`transpose_queries`: its tokens zero-padded to ``lanes`` (a
    multiple of 8) and cut into panels of 16 query tokens (8 for the last one when that is all
    that is left), each stored transposed so that a panel streams contiguously from L1. A tile
    holds the dot products of R document rows with one panel in R x 2 (or R x 1) eight-lane
    vector accumulators, 12 (or 8) of the 16 AVX registers; each step over the ``dim`` values
    loads the panel's values as vectors, broadcasts each row's value and issues one fused
    multiply-add per accumulator, so no horizontal sum is ever needed: the running maximum over
    document tokens is an element-wise ``max`` of vectors, kept per query token in ``best``.
    Returns the sum over the ``n_query`` real tokens of ``best``; padded lanes are ignored. Rows
    are read at ``rows[r_off + j * dim + k]``. Where ``dim`` is a compile-time constant (the
    callers specialise the common widths) every row offset becomes an immediate, which frees the
    registers the row pointers would take.

Bounds are the caller's duty (these intrinsics read raw pointers): ``qt`` holds ``dim * lanes``
values from ``q_off``, ``rows`` ``n_rows * dim`` from ``r_off``, ``best`` at least ``lanes``.
Every array must be C-contiguous float32 (checked at typing time).
"""

import llvmlite.binding as ll
import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.core.extending import intrinsic

_F32 = ir.FloatType()
_I32 = ir.IntType(32)
_I64 = ir.IntType(64)
_VEC = ir.VectorType(_F32, 8)


_HOST_F16C = bool(ll.get_host_cpu_features().get("f16c", False))


@intrinsic
def _fpext_half(typingctx, bits):
    if not isinstance(bits, types.Integer) or bits.bitwidth != 16:
        return None

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), _F32)

    return types.float32(bits), codegen


@intrinsic
def _bits_to_float(typingctx, bits):
    # the float32 whose bit pattern is the low 32 bits of an integer
    if not isinstance(bits, types.Integer) or bits.bitwidth < 32:
        return None

    def codegen(context, builder, signature, args):
        value = args[0] if signature.args[0].bitwidth == 32 else builder.trunc(args[0], _I32)
        return builder.bitcast(value, _F32)

    return types.float32(bits), codegen


@njit(inline="always", fastmath=True, nogil=True)
def _half_bits(bits):
    # Without F16C LLVM would call a runtime helper the JIT may not have: move sign, exponent and
    # mantissa into place and re-bias by 2**112 (exact for every finite half, subnormals too;
    # infinities and NaN are not kept, and the index never stores them).
    h = np.uint32(bits)
    return _bits_to_float(((h & np.uint32(0x7FFF)) << np.uint32(13)) | ((h & np.uint32(0x8000)) << np.uint32(16))) * np.float32(2.0**112)


half_to_float = _fpext_half if _HOST_F16C else _half_bits


def _float32_c(array) -> bool:
    return isinstance(array, types.Array) and array.dtype == types.float32 and array.layout == "C"


def _tile(lane_vectors: int, rows: int):
    """An intrinsic ``tile(qt, q_off, lanes, doc, d_off, dim, best, b_off)``: for ``8 *
    lane_vectors`` query tokens from lane ``b_off`` (their values at ``qt[q_off + k * lanes]``
    onward) and ``rows`` document rows at ``doc[d_off + j * dim]``, ``best[b_off + i] =
    max(best[b_off + i], max_j <q_i, d_j>)``."""

    @intrinsic
    def tile(typingctx, qt, q_off, lanes, doc, d_off, dim, best, b_off):
        if not (_float32_c(qt) and _float32_c(doc) and _float32_c(best)):
            return None
        signature = types.void(qt, q_off, lanes, doc, d_off, dim, best, b_off)

        def codegen(context, builder, sig, args):
            qt_v, q_off_v, lanes_v, doc_v, d_off_v, dim_v, best_v, b_off_v = args
            q_ptr = builder.gep(context.make_array(sig.args[0])(context, builder, qt_v).data, [q_off_v])
            d_ptr = builder.gep(context.make_array(sig.args[3])(context, builder, doc_v).data, [d_off_v])
            b_ptr = builder.gep(context.make_array(sig.args[6])(context, builder, best_v).data, [b_off_v])
            module = builder.module
            # fmuladd: one FMA where the CPU has it, a multiply and an add where it has not
            fma = cgutils.get_or_insert_function(module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), "llvm.fmuladd.v8f32")
            vmax = cgutils.get_or_insert_function(module, ir.FunctionType(_VEC, [_VEC, _VEC]), "llvm.maxnum.v8f32")
            vec_ptr = _VEC.as_pointer()
            row_ptrs = [builder.gep(d_ptr, [builder.mul(dim_v, ir.Constant(_I64, r))]) for r in range(rows)]
            entry = builder.block
            loop = builder.append_basic_block("maxsim_tile")
            done = builder.append_basic_block("maxsim_tile_done")
            builder.branch(loop)

            builder.position_at_end(loop)
            k = builder.phi(_I64)
            k.add_incoming(ir.Constant(_I64, 0), entry)
            acc = [[builder.phi(_VEC) for _ in range(lane_vectors)] for _ in range(rows)]
            for row in acc:
                for a in row:
                    a.add_incoming(ir.Constant(_VEC, None), entry)
            q_row = builder.gep(q_ptr, [builder.mul(k, lanes_v)])
            q = [builder.load(builder.bitcast(builder.gep(q_row, [ir.Constant(_I64, 8 * v)]), vec_ptr), align=4) for v in range(lane_vectors)]
            splat = ir.Constant(ir.VectorType(_I32, 8), [0] * 8)
            updated = []
            for r in range(rows):
                x = builder.load(builder.gep(row_ptrs[r], [k]), align=4)
                x = builder.shuffle_vector(builder.insert_element(ir.Constant(_VEC, ir.Undefined), x, ir.Constant(_I32, 0)), ir.Constant(_VEC, ir.Undefined), splat)
                updated.append([builder.call(fma, [x, q[v], acc[r][v]]) for v in range(lane_vectors)])
            for r in range(rows):
                for v in range(lane_vectors):
                    acc[r][v].add_incoming(updated[r][v], loop)
            k_next = builder.add(k, ir.Constant(_I64, 1))
            k.add_incoming(k_next, loop)
            builder.cbranch(builder.icmp_signed("<", k_next, dim_v), loop, done)

            builder.position_at_end(done)
            for v in range(lane_vectors):
                pointer = builder.bitcast(builder.gep(b_ptr, [ir.Constant(_I64, 8 * v)]), vec_ptr)
                running = builder.load(pointer, align=4)
                for r in range(rows):
                    running = builder.call(vmax, [running, updated[r][v]])
                builder.store(running, pointer, align=4)
            return context.get_dummy_value()

        return signature, codegen

    return tile


def _row_loop(lane_vectors: int, full: int):
    """``rows(qt, q_off, lanes, doc, d_off, n_rows, dim, best, b_off)``: every one of ``n_rows``
    document rows against ``8 * lane_vectors`` query lanes, in tiles of ``full`` rows, then what
    is left in tiles of 4, 2 and 1 rows."""
    whole, four, two, one = (_tile(lane_vectors, r) for r in (full, 4, 2, 1))

    @njit(inline="always", nogil=True)
    def rows(qt, q_off, lanes, doc, d_off, n_rows, dim, best, b_off):
        j = 0
        while j + full <= n_rows:
            whole(qt, q_off, lanes, doc, d_off + j * dim, dim, best, b_off)
            j += full
        if n_rows - j >= 4:
            four(qt, q_off, lanes, doc, d_off + j * dim, dim, best, b_off)
            j += 4
        if n_rows - j >= 2:
            two(qt, q_off, lanes, doc, d_off + j * dim, dim, best, b_off)
            j += 2
        if n_rows - j >= 1:
            one(qt, q_off, lanes, doc, d_off + j * dim, dim, best, b_off)

    return rows


# 16 query lanes x 6 rows and 8 lanes x 8 rows: 12 and 8 of the 16 vector registers accumulate
_rows16 = _row_loop(2, 6)
_rows8 = _row_loop(1, 8)


@njit(inline="always", nogil=True)
def score_rows(qt, q_off, lanes, n_query, rows, r_off, n_rows, dim, best):
    """Sum over the query's ``n_query`` tokens of their best dot product with the ``n_rows`` rows
    (0 for no rows); see the module doc for the layout."""
    if n_rows <= 0:
        return np.float32(0.0)
    for i in range(lanes):
        best[i] = -np.inf
    lane = 0
    while lane + 16 <= lanes:  # 16-lane panels, then one of 8 if left
        _rows16(qt, q_off + dim * lane, 16, rows, r_off, n_rows, dim, best, lane)
        lane += 16
    if lane < lanes:
        _rows8(qt, q_off + dim * lane, 8, rows, r_off, n_rows, dim, best, lane)
    total = np.float32(0.0)
    for i in range(n_query):
        total += best[i]
    return total


@njit(nogil=True)
def query_lanes(n_query):
    """Lanes a query of ``n_query`` tokens takes: rounded up to a multiple of 8."""
    return (n_query + 7) // 8 * 8


@njit(nogil=True)
def transpose_queries(queries, query_offsets):
    """Each query of a flat float32 ``(n_tokens, dim)`` matrix packed for :func:`score_rows`, one
    after another in one flat array; returns it, each query's start in it, and the most lanes any
    query takes (at least 8: the size of the ``best`` buffer). A query's tokens are zero-padded
    to its lanes and cut into panels of 16 (the last one 8 when that is all that is left); a
    panel of width ``w`` from lane ``l`` is stored transposed, ``[k][w]``, at ``start + dim * l``,
    so a tile streams one contiguous panel that stays in L1."""
    n_queries = query_offsets.shape[0] - 1
    dim = queries.shape[1]
    starts = np.zeros(n_queries + 1, dtype=np.int64)
    widest = 8
    for q in range(n_queries):
        lanes = query_lanes(query_offsets[q + 1] - query_offsets[q])
        starts[q + 1] = starts[q] + dim * lanes
        widest = max(widest, lanes)
    qt = np.zeros(max(starts[n_queries], 1), dtype=np.float32)
    for q in range(n_queries):
        lanes = query_lanes(query_offsets[q + 1] - query_offsets[q])
        for i in range(query_offsets[q + 1] - query_offsets[q]):
            panel = i // 16 * 16
            width = 16 if panel + 16 <= lanes else 8
            at = starts[q] + dim * panel + (i - panel)
            row = query_offsets[q] + i
            for k in range(dim):
                qt[at + k * width] = queries[row, k]
    return qt, starts, widest

if numba.config.DISABLE_JIT:  # pure Python (NUMBA_DISABLE_JIT=1, for debugging): NumPy stands in for the intrinsics

    def half_to_float(bits):  # noqa: F811
        return np.asarray(bits, dtype=np.uint16).view(np.float16).astype(np.float32)

    def score_rows(qt, q_off, lanes, n_query, rows, r_off, n_rows, dim, best):  # noqa: F811
        if n_rows <= 0:
            return np.float32(0.0)
        panels, lane = [], 0
        while lane < lanes:
            width = 16 if lane + 16 <= lanes else 8
            panels.append(qt[q_off + dim * lane : q_off + dim * (lane + width)].reshape(dim, width))
            lane += width
        doc = rows.reshape(-1)[r_off : r_off + n_rows * dim].reshape(n_rows, dim)
        return np.float32((doc @ np.hstack(panels)[:, :n_query]).max(axis=0).sum()) if n_query else np.float32(0.0)
