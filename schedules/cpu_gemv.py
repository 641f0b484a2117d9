"""CPU GEMV: ``linear`` with at most 8 rows of x (LLM token generation) at memory bandwidth, for q4_0, q8_0, q4_k and
q6_k weights in their GGUF layout (no repacking), on AVX-512 CPUs.

The tiled schedule (``schedules/cpu.py``) decodes a tile of W to f32 and multiplies it; with one row of x every
decoded weight is used once, so decoding costs more than reading the weight (q4_0 4096 x 4096: 4.9 ms, 1.9 GB/s).
This rule replaces the scheduled function's body (``sch.state.replace`` of the root block) with a hand-written loop
nest built with TVM's TIR IR builder, which does what ggml's kernels do, with 16-bit activations instead of 8 (the
math and its error bound: ``sdcompile/kernels/linear_gemv.py``):

- **prep** (serial, once per call, ~1 ns per activation): each row of x becomes int16 ``xq`` with one f32 scale per
  block (q4_0, q8_0) or super-block (k-quants), plus per-(sub-)block sums of ``xq`` for the types' offsets (q4_0's
  -8, q4_k's mins, q6_k's -32). ``xq`` is stored in the order in which quants come out of the weight bytes (q4_0:
  the low nibbles of two blocks, then their high nibbles; k-quants: the even or odd bytes of a 64-byte load), so
  weights never need a shuffle to line up with activations.
- **rows** (parallel over ``CHUNKS`` tasks): each thread streams whole weight rows, ``streams(M)`` rows from
  different quarters of the matrix at once (independent memory streams: 1 -> 4 measured 11.8 -> 15.1 GB/s on a
  loaded machine), with a software prefetch ``PREFETCH`` bytes ahead in each. Per unit (8 q4_0/q8_0 blocks, one
  k-quant super-block) quants become int16 lanes (q4_0: ``vpermb`` of 64-byte windows over its 18-byte blocks,
  duplicating each byte into a word whose low and top nibbles are the two quants; q8_0: sign-extending loads;
  k-quants: shifts and masks of 64-byte loads seen as 16-bit words, sub-block scales multiplied in as int16), which
  ``vpdpwssds`` (AVX512-VNNI; ``vpmaddwd`` + add without it) multiplies with ``xq`` and sums in int32, exactly; one
  f32 conversion and scale per block or super-block follows. The epilogue (bias, activation, residual) runs per
  output.

Every vector is 512-bit and every index pattern a constant shuffle, which LLVM lowers to ``vpermb`` / ``vpermw`` /
``vpermps``. The rule is used for AVX-512 targets with AVX512BW (``applicable``) unless the AMX rule takes the spec
(from 5-8 rows on CPUs with AMX, ``schedules/cpu_amx.py``); other types, M > 8 and other CPUs keep the tiled
schedule. Measured with ``benchmarks/gemv.py`` (M = 1, 4096 x 4096 and 4096 x 11008, cold caches,
2 threads, 2-core AVX-512 VM): 27-32 GB/s for all four types, 89-106% of that script's read-bandwidth figure (30 GB/s;
a sum over two streams per thread reads 33-35 GB/s), as fast as ggml's AMX buffer for q4_0 and 0.5-0.9x ggml's best
time for the others; 14-28x faster than the tiled schedule.
"""

from __future__ import annotations

import math

import tvm
from tvm import s_tir, tirx
from tvm.script.ir_builder import tirx as T

from schedules.tir_build import (
    bcast,
    f16_to_f32,
    hsum,
    imm,
    load_f32,
    prefetch,
    prim_func,
    reduce_tree,
    replace_body,
    shuffle,
    splat,
    store_output,
    vconst,
    vload,
    vstore,
)
from sdcompile.kernels import linear_gemv as G
from sdcompile.kernels.spec import KernelSpec
from sdcompile.quant.types import get as get_type

PREFETCH = 1024  # bytes ahead of each row stream
PREFETCH_LOCALITY = 3  # tir_build.prefetch locality: 3 = prefetcht0
CHUNKS = 64  # parallel tasks over row sets (TVM hands each thread a contiguous range of them)
INT32_MAX = 2**31 - 1


# --- when ------------------------------------------------------------------------------------------------------


def target_features() -> tuple[bool, bool]:
    """(AVX512BW, AVX512-VNNI) of the LLVM target being compiled for: the current target if one is entered, else the
    host CPU target that ``build_kernels`` compiles for (``tvm_layer.cpu_target``)."""
    target = tvm.target.Target.current(allow_none=True)
    if target is None or target.kind.name != "llvm":
        from sdcompile.codegen import tvm_layer

        target = tvm.target.Target(tvm_layer.cpu_target())
    has = tvm.target.codegen.llvm_cpu_has_features
    return bool(has("avx512bw", target)), bool(has("avx512vnni", target))


def applicable(spec: KernelSpec, lanes: int) -> bool:
    """Whether ``linear`` ``spec`` runs as a GEMV on a CPU with ``lanes`` f32 lanes per vector."""
    return (
        spec.op == "linear"
        and str(spec.attr("wtype")) in G.TYPES
        and int(spec.attr("M")) <= G.MAX_ROWS
        and lanes == 16
        and target_features()[0]
    )


def streams(M: int) -> int:
    """Weight rows in flight per thread: independent memory streams keep more reads in flight (M = 1, 4096 x 4096,
    cold: q4_0 318 -> 262 us from 4 to 6 streams), but each needs M accumulators and its share of the registers:
    q4_k at M = 4 took 950 us with 2 streams, 660 us with one."""
    return 6 if M == 1 else 2 if M == 2 else 1


class _Ops:
    def __init__(self, vnni: bool):
        self.vnni = vnni

    def dot(self, acc, a, b):
        """acc (int32x16) + pairwise sums of a * b (int16x32): vpdpwssds, or vpmaddwd + vpaddd.

        The saturating form, because LLVM splits the plain vpdpwssd back into vpmaddwd + vpaddd on some CPUs
        (measured 8% slower); sums never come near saturation (bounds asserted per type)."""
        if self.vnni:
            return T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.vpdpwssds.512", acc, a, b)
        return acc + T.call_llvm_pure_intrin("int32x16", "llvm.x86.avx512.pmaddw.d.512", a, b)


def _check_bound(name: str, bound: int) -> None:
    if bound > INT32_MAX:
        raise AssertionError(f"{name}: int32 accumulator bound {bound} overflows")


# --- the kernel ------------------------------------------------------------------------------------------------


class _Gemv:
    """Emits the loop nest for one spec into the current IR builder frame."""

    def __init__(self, spec: KernelSpec, bufs: dict, vnni: bool):
        self.spec = spec
        self.M, self.N, self.K = (int(spec.attr(k)) for k in "MNK")
        self.wtype = str(spec.attr("wtype"))
        self.qt = get_type(self.wtype)
        self.RB = self.qt.row_bytes(self.K)
        self.g = G.group(self.wtype)
        self.ngroups = self.K // self.g
        self.bufs = bufs
        self.ops = _Ops(vnni)
        self.S = streams(self.M)
        self.act = str(spec.attr("act", "none"))
        if self.wtype in ("q4_0", "q8_0"):
            self.nblk = self.K // 32
            self.nunits = self.nblk // 8
            self.unit_bytes = 8 * self.qt.type_size
        else:
            self.nunits = self.K // 256
            self.unit_bytes = self.qt.type_size
        self._bounds()

    def _bounds(self) -> None:
        xq = G.XQ_MAX
        if self.wtype == "q4_0":  # two dots of 2 products per lane, |q| <= 15, plus the -8 * sum(xq) offset
            _check_bound("q4_0", 2 * 2 * 15 * xq + 8 * 32 * xq)
        elif self.wtype == "q8_0":
            _check_bound("q8_0", 2 * 128 * xq)
        elif self.wtype == "q4_k":  # 8 dots per lane per super-block, q * sc <= 15 * 63
            _check_bound("q4_k", 8 * 2 * 15 * 63 * xq)
        elif self.wtype == "q6_k":  # 4 dots per lane per half super-block, q * sc in [-63 * 128, 63 * 127]
            _check_bound("q6_k", 4 * 2 * 63 * 128 * xq)
            _check_bound("q6_k offset", 128 * 16 * xq)

    # -- buffers --

    def build(self) -> None:
        M, K = self.M, self.K
        b = self.bufs
        words = b["w"].shape[0]
        self.w8 = T.decl_buffer((words * 4,), "int8", data=b["w"].data)
        self.wu8 = T.decl_buffer((words * 4,), "uint8", data=b["w"].data)
        self.w16 = T.decl_buffer((words * 2,), "int16", data=b["w"].data)
        self.xq = T.alloc_buffer((M * K,), "int16")
        self.xs = T.alloc_buffer((M * self.ngroups,), "float32")
        xi = {"q4_0": K // 4, "q8_0": 1, "q4_k": K // 32, "q6_k": K // 16}[self.wtype]
        self.xi = T.alloc_buffer((M * xi,), "int32")
        self.xi_row = xi
        if self.g == 256:
            self.xn = T.alloc_buffer((256,), "int16")  # one super-block's xq in natural order
        self.prep()
        self.rows()

    # -- activations --

    def prep(self) -> None:
        M, g = self.M, self.g
        x = self.bufs["x"]
        nvec = g // 16
        if nvec > 2:  # k-quants: loops over the group's 16 vectors (unrolled code makes TVM's passes crawl)
            amx = T.alloc_local((16,), "float32")
            tot = T.alloc_local((16,), "float32")
        with T.serial(0, M) as m:
            with T.serial(0, self.ngroups) as gi:
                if nvec > 2:
                    vstore(amx, 0, splat(0.0, "float32", 16), 16)
                    vstore(tot, 0, splat(0.0, "float32", 16), 16)
                    with T.serial(0, nvec) as i:
                        v = T.bind(load_f32(x, [m, T.Ramp(gi * g + 16 * i, 1, 16)], 16))
                        vstore(amx, 0, T.max(vload(amx, 0, 16), T.abs(v)), 16)
                        vstore(tot, 0, vload(tot, 0, 16) + v, 16)
                    a, t = vload(amx, 0, 16), vload(tot, 0, 16)
                else:
                    v = [T.bind(load_f32(x, [m, T.Ramp(gi * g + 16 * i, 1, 16)], 16)) for i in range(nvec)]
                    a, t = T.max(T.abs(v[0]), T.abs(v[1])), v[0] + v[1]
                amax = T.bind(reduce_tree(a, 16, T.max))
                total = T.bind(hsum(t, 16))
                inv = T.bind(T.Select(amax > T.float32(0), T.float32(float(G.XQ_MAX)) / amax, T.float32(0)))
                # A group holding an infinity or a NaN gets a NaN scale (max may drop NaNs; the sum keeps them).
                dx = T.Select(T.isfinite(total), amax * T.float32(1.0 / G.XQ_MAX), T.float32(math.nan))
                T.buffer_store(self.xs, dx, [m * self.ngroups + gi])

                def quant(v):
                    return T.Cast("int32x16", T.nearbyint(v * bcast(inv, 16)))

                if nvec > 2:
                    self._store_kquant(m, gi, quant)
                else:
                    self._store_block(m, gi, [T.bind(quant(vi)) for vi in v])

    def _store_block(self, m, b, q) -> None:
        """q4_0 / q8_0: one block's 32 int16 activations and (q4_0) its -8 * sum(xq) offset."""
        K, xq, xi = self.K, self.xq, self.xi
        if self.wtype == "q8_0":
            vstore(xq, m * K + 32 * b, T.Cast("int16x32", shuffle(q, range(32))), 32)
            return
        total = T.bind(hsum(q[0] + q[1], 16))
        # Main units: pair p of blocks 2p, 2p + 1 holds [b0 lo, b1 lo, b0 hi, b1 hi] (16 each); tail blocks
        # (after the last unit of 8) keep their natural order. xi: -8 * sum(xq) at lane 0 of 8 per block.
        main = b < self.nunits * 8
        pos = T.Select(main, (b // 2) * 64 + (b % 2) * 16, 32 * b)
        hi = T.Select(main, imm(32), imm(16))
        vstore(xq, m * K + pos, T.Cast("int16x16", q[0]), 16)
        vstore(xq, m * K + pos + hi, T.Cast("int16x16", q[1]), 16)
        vstore(xi, m * self.xi_row + 8 * b, shuffle([bcast(total * -8, 8), splat(0, "int32", 8)], [0] + [8] * 7), 8)

    def _store_kquant(self, m, gi, quant) -> None:
        """k-quants: the sums of a super-block's sub-blocks (32 values for q4_k's mins, 16 for q6_k's -32 offset),
        and its 256 int16 activations in the order the units extract quants: 8 vectors of 32, each the even or odd
        elements (byte parity p in a little-endian word) of two runs of 32 (q4_k) or of one run of 64 (q6_k)."""
        K, xn, x = self.K, self.xn, self.bufs["x"]
        with T.serial(0, 16) as i:
            vstore(xn, 16 * i, T.Cast("int16x16", quant(load_f32(x, [m, T.Ramp(gi * 256 + 16 * i, 1, 16)], 16))), 16)
        sub = 32 if self.wtype == "q4_k" else 16
        with T.serial(0, 256 // sub) as j:
            v = T.Cast(f"int32x{sub}", vload(xn, sub * j, sub))
            T.buffer_store(self.xi, hsum(v, sub), [m * self.xi_row + gi * (256 // sub) + j])
        for o in range(8):
            hi, nib, p = o // 4, (o // 2) % 2, o % 2
            if self.wtype == "q4_k":  # runs at 128 t' + 32 nib and + 64 (t' = hi)
                runs = (128 * hi + 32 * nib, 128 * hi + 64 + 32 * nib)
                idx = [p + 2 * j for j in range(16)] + [32 + p + 2 * j for j in range(16)]
            else:  # q6_k: the run of 64 at 128 h + 64 nib (h = hi)
                runs = (128 * hi + 64 * nib, 128 * hi + 64 * nib + 32)
                idx = [p + 2 * i for i in range(32)]
            vec = shuffle([vload(xn, runs[0], 32), vload(xn, runs[1], 32)], idx)
            vstore(self.xq, m * K + gi * 256 + 32 * o, vec, 32)

    # -- rows --

    def rows(self) -> None:
        N, S, M = self.N, self.S, self.M
        # Row set i is rows i + s * NS, s < S. An odd spacing NS keeps the S streams from sitting at the same
        # address modulo 4 KiB (and the L2's set stride), where they would evict each other's prefetched lines:
        # with 4096 rows and 4 streams, an even spacing of 1024 rows cost q4_k 4096 x 4096 ~10%.
        NS = N // S
        if S > 1 and NS > 1 and NS % 2 == 0:
            NS -= 1
        rem = N - S * NS
        rpc = max(1, -(-NS // CHUNKS))
        nch = -(-NS // rpc) if NS else 0
        # Each task's accumulators: an LLVM alloca per task, which LLVM keeps in registers (TVM turns allocations
        # inside a parallel loop into runtime workspace calls, whose memory LLVM must reload and store around
        # every accumulation; it then also reloads x's vectors for every row stream).
        stride = S * M * 32 + 2 * (-(-S * M // 2))

        def local(c):
            mem = T.bind(T.tvm_stack_alloca("shape", stride // 2))
            self.facc = T.decl_buffer((S * M * 32,), "float32", data=mem)
            self.tsum = T.decl_buffer((S * M,), "float32", data=mem, elem_offset=S * M * 32)

        if nch == 0:  # fewer rows than streams
            with T.parallel(0, 1) as c:
                local(c)
                with T.serial(0, N) as r:
                    self.row_set([r])
            return
        with T.parallel(0, nch) as c:
            local(c)
            with T.serial(0, rpc) as r:
                i = c * rpc + r
                if NS % rpc:
                    with T.If(i < NS):
                        with T.Then():
                            self.row_set([i + s * NS for s in range(S)])
                else:
                    self.row_set([i + s * NS for s in range(S)])
            if rem:
                with T.If(c == nch - 1):
                    with T.Then():
                        with T.serial(0, rem) as rr:
                            self.row_set([S * NS + rr])

    def row_set(self, rows: list) -> None:
        M = self.M
        nacc = len(rows) * M
        for i in range(nacc):
            vstore(self.facc, 32 * i, splat(0.0, "float32", 32), 32)
            T.buffer_store(self.tsum, T.float32(0), [i])
        bases = [r * self.RB for r in rows]
        if self.nunits:
            with T.serial(0, self.nunits) as u:
                for s, rb in enumerate(bases):
                    base = T.bind(rb + u * self.unit_bytes)
                    if PREFETCH:
                        for o in range(0, self.unit_bytes, 64):  # gaps <= 64 bytes: every line once
                            prefetch(T.address_of(self.w8[base + PREFETCH + o]), locality=PREFETCH_LOCALITY)
                    getattr(self, "unit_" + self.wtype)(s, base, u)
        if self.wtype in ("q4_0", "q8_0") and self.nblk % 8:
            with T.serial(self.nunits * 8, self.nblk) as b:
                for s, rb in enumerate(bases):
                    self.tail_block(s, rb, b)
        for s, row in enumerate(rows):
            for m in range(M):
                i = s * M + m
                v = hsum(vload(self.facc, 32 * i, 16) + vload(self.facc, 32 * i + 16, 16), 16) + self.tsum[i]
                self.store_y(m, row, v)

    def store_y(self, m, n, v) -> None:
        store_output(self.bufs, self.act, m, n, v)

    def _acc(self, s, m, chain, value, lanes=16) -> None:
        o = (s * self.M + m) * 32 + 16 * chain
        vstore(self.facc, o, vload(self.facc, o, lanes) + value, lanes)

    # -- per type units --

    def unit_q4_0(self, s, base, u) -> None:
        w8, K, M = self.w8, self.K, self.M
        A = T.bind(vload(w8, base, 64))
        D = T.bind(vload(w8, base + 36, 64))
        B = T.bind(vload(w8, base + 64, 64))
        C = T.bind(vload(w8, base + 80, 64))
        # The 8 blocks' f16 scales sit at bytes 18 i: words 0, 9, 18, 27 of A and 4, 13, 22, 31 of B.
        A16, B16 = T.reinterpret("int16x32", A), T.reinterpret("int16x32", B)
        dw = T.bind(f16_to_f32(shuffle([A16, B16], [0, 9, 18, 27, 36, 45, 54, 63]), 8))
        ss = [T.bind(dw * vload(self.xs, m * self.ngroups + u * 8, 8)) for m in range(M)]
        for p in range(4):
            # Pair p: blocks 2p, 2p + 1 at bytes 36p, 36p + 18; their 16 quant bytes each, every byte twice (a word
            # whose low nibble is the low quant, whose top nibble is the high one).
            src, shift = [(A, 0), (D, 36), (B, 64), (C, 80)][p]
            offs = [36 * p + 2 + i if i < 16 else 36 * p + 20 + (i - 16) for i in range(32)]
            wv = T.bind(T.reinterpret("int16x32", shuffle([src], [o - shift for o in offs for _ in range(2)])))
            lo = T.bind(wv & splat(15, "int16", 32))
            hi = T.bind(T.reinterpret("int16x32", T.reinterpret("uint16x32", wv) >> splat(12, "uint16", 32)))
            pair = u * 4 + p
            for m in range(M):
                acc = vload(self.xi, m * self.xi_row + 16 * pair, 16)
                acc = self.ops.dot(acc, lo, vload(self.xq, m * K + 64 * pair, 32))
                acc = self.ops.dot(acc, hi, vload(self.xq, m * K + 64 * pair + 32, 32))
                scale = shuffle([ss[m], ss[m]], [2 * p] * 8 + [2 * p + 1] * 8)
                self._acc(s, m, p % 2, T.Cast("float32x16", acc) * scale)

    def unit_q8_0(self, s, base, u) -> None:
        w8, K, M = self.w8, self.K, self.M
        for b in range(8):
            # Each block's f16 scale as a scalar: windows over the blocks would overlap the quant loads, and LLVM
            # then rebuilds the quants from the windows byte by byte.
            d = f16_to_f32(self.w16[(base + 34 * b) // 2], 1)
            q = T.bind(T.Cast("int16x32", vload(w8, base + 34 * b + 2, 32)))
            blk = u * 8 + b
            for m in range(M):
                acc = self.ops.dot(splat(0, "int32", 16), q, vload(self.xq, m * K + 32 * blk, 32))
                scale = bcast(d * self.xs[m * self.ngroups + blk], 16)
                self._acc(s, m, b % 2, T.Cast("float32x16", acc) * scale)

    def tail_block(self, s, rb, b) -> None:
        """One q4_0 / q8_0 block after the last full unit of 8 (natural order in xq)."""
        K, M = self.K, self.M
        off = rb + b * self.qt.type_size
        d = f16_to_f32(self.w16[off // 2], 1)
        if self.wtype == "q4_0":
            v = T.Cast("int16x16", vload(self.wu8, off + 2, 16))
            q = T.bind(shuffle([v & splat(15, "int16", 16), v >> splat(4, "int16", 16)], range(32)))
        else:
            q = T.bind(T.Cast("int16x32", vload(self.w8, off + 2, 32)))
        for m in range(M):
            acc = self.ops.dot(splat(0, "int32", 16), q, vload(self.xq, m * K + 32 * b, 32))
            total = hsum(acc, 16)
            if self.wtype == "q4_0":
                total = total + self.xi[m * self.xi_row + 8 * b]
            i = s * M + m
            v = T.Cast("float32", total) * (d * self.xs[m * self.ngroups + b])
            T.buffer_store(self.tsum, self.tsum[i] + v, [i])

    def _words(self, at: int | tirx.Expr):
        """64 weight bytes at ``at`` as 32 little-endian u16 words: byte 2i in the low half of word i."""
        return T.bind(T.reinterpret("uint16x32", vload(self.w8, at, 64)))

    def unit_q4_k(self, s, base, u) -> None:
        K, M = self.K, self.M
        dd = T.bind(f16_to_f32(vload(self.w16, base // 2, 2), 2))  # d, dmin
        V = T.bind(T.Cast("int16x16", vload(self.wu8, base, 16)))  # d, dmin, then the 12 scale bytes b[0..11]
        # ggml's get_scale_min_k4 for all 8 sub-blocks at once: lanes 0-7 scales, 8-15 mins (b[k] is lane 4 + k).
        P = shuffle([V], [4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15])
        Q = shuffle([V], [0, 0, 0, 0, 4, 5, 6, 7, 0, 0, 0, 0, 8, 9, 10, 11])
        lo = (P >> vconst([0] * 12 + [4] * 4, "int16")) & vconst(([63] * 4 + [15] * 4) * 2, "int16")
        hi = ((Q >> splat(6, "int16", 16)) << splat(4, "int16", 16)) & vconst(([0] * 4 + [0x30] * 4) * 2, "int16")
        SM = T.bind(lo | hi)
        # Quants: 64 bytes (128 quants: sub-blocks 4t'..4t'+3) at a time, as words; nibble nib of byte parity p
        # of word i is quant 128 t' + 64 (i >= 16) + 32 nib + (2 i + p) % 32, sub-block 4t' + 2 (i >= 16) + nib.
        # Two int32 accumulators per row: a chain of 8 dependent vpdpwssds is 40 cycles.
        accs = [[splat(0, "int32", 16)] * M for _ in range(2)]
        for tp in range(2):
            L = self._words(base + 16 + 64 * tp)
            for nib in range(2):
                sc = T.bind(
                    T.reinterpret("uint16x32", shuffle([SM, SM], [4 * tp + nib] * 16 + [4 * tp + 2 + nib] * 16))
                )
                for p in range(2):
                    shift = 8 * p + 4 * nib
                    q = (
                        L >> splat(shift, "uint16", 32)
                        if shift == 12
                        else (L >> splat(shift, "uint16", 32)) & splat(15, "uint16", 32)
                    )
                    a = T.bind(T.reinterpret("int16x32", q * sc))
                    o = 4 * tp + 2 * nib + p
                    for m in range(M):
                        xv = vload(self.xq, m * K + u * 256 + 32 * o, 32)
                        accs[p][m] = T.bind(self.ops.dot(accs[p][m], a, xv))
        mins = T.bind(T.Cast("int32x8", shuffle([SM], range(8, 16))))
        for m in range(M):
            sdx = T.bind(dd * bcast(self.xs[m * self.ngroups + u], 2))
            self._acc(s, m, 0, T.Cast("float32x16", accs[0][m] + accs[1][m]) * bcast(shuffle([sdx], [0]), 16))
            mx = mins * vload(self.xi, m * self.xi_row + u * 8, 8)
            self._acc(s, m, 1, T.Cast("float32x8", mx) * bcast(-shuffle([sdx], [1]), 8), 8)

    def unit_q6_k(self, s, base, u) -> None:
        K, M = self.K, self.M
        d = T.bind(f16_to_f32(self.w16[(base + 208) // 2], 1))
        sc16 = T.bind(T.Cast("int16x16", vload(self.w8, base + 192, 16)))
        sc32 = T.Cast("int32x16", vload(self.w8, base + 192, 16))
        accs = [[splat(0, "int32", 16)] * M for _ in range(2)]
        m15, m30 = splat(15, "uint16", 32), splat(0x30, "uint16", 32)
        for h in range(2):
            # ql: 64 bytes as words; qh: its 32 bytes (16 words) in both halves. Quant 128 h + 64 nib + 2 i + p
            # (p: byte parity in word i) has its low 4 bits in nibble nib of ql byte 64 h + 2 i + p and its top
            # 2 in field 2 nib + (i >= 16) of qh byte 32 h + (2 i + p) % 32: qh word i % 16, byte p.
            L = self._words(base + 64 * h)
            qh = T.bind(vload(self.w16, (base + 128 + 32 * h) // 2, 16))
            QH = T.bind(T.reinterpret("uint16x32", shuffle([qh, qh], list(range(16)) * 2)))
            for nib in range(2):
                for p in range(2):
                    shift = 8 * p + 4 * nib
                    lo = L >> splat(shift, "uint16", 32) if shift == 12 else (L >> splat(shift, "uint16", 32)) & m15
                    # field bits 8 p + 2 f, f = 2 nib + (i >= 16), moved to bits 4-5
                    r = [8 * p + 2 * (2 * nib + half) - 4 for half in (0, 1)]
                    if r[0] < 0:
                        top = QH << vconst([-r[0]] * 16 + [-r[1]] * 16, "uint16")
                    else:
                        top = QH >> vconst([r[0]] * 16 + [r[1]] * 16, "uint16")
                    q = T.reinterpret("int16x32", lo | (top & m30))
                    sub = 8 * h + 4 * nib
                    a = T.bind(q * shuffle([sc16, sc16], [sub + i // 8 for i in range(32)]))
                    o = 4 * h + 2 * nib + p
                    for m in range(M):
                        xv = vload(self.xq, m * K + u * 256 + 32 * o, 32)
                        accs[h][m] = T.bind(self.ops.dot(accs[h][m], a, xv))
        for m in range(M):
            # quants are stored + 32: subtract 32 * sum over sub-blocks of sc * sum(xq)
            corr = sc32 * vload(self.xi, m * self.xi_row + u * 16, 16)
            f = T.Cast("float32x16", accs[0][m]) + T.Cast("float32x16", accs[1][m])
            f = f - T.Cast("float32x16", corr) * splat(32.0, "float32", 16)
            self._acc(s, m, 0, f * bcast(d * self.xs[m * self.ngroups + u], 16))


def build(spec: KernelSpec, params: list, vnni: bool) -> tirx.PrimFunc:
    """The GEMV PrimFunc of ``spec`` over the given parameter buffers (``spec.params`` order)."""
    return prim_func(spec, params, lambda bufs: _Gemv(spec, bufs, vnni).build())


def linear(sch: s_tir.Schedule, spec: KernelSpec, cpu) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with the GEMV loop nest."""
    vnni = target_features()[1]
    replace_body(sch, spec, lambda spec, params: build(spec, params, vnni))


__all__ = ["applicable", "build", "linear", "streams", "target_features"]
