"""Building blocks for schedules written directly as TIR with TVM's IR builder (``cpu_gemv``, ``cpu_amx``): vector
loads and stores, shuffles, constants, reductions, the fused epilogue, and the PrimFunc that replaces a scheduled
function's body. Every vector is an explicit TIR vector type, so LLVM sees exactly the widths written here.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from sdcompile.kernels.act import narrow, widen
from sdcompile.kernels.linear import activation
from sdcompile.kernels.spec import KernelSpec


def imm(v: int) -> tirx.IntImm:
    return tirx.IntImm("int32", v)


def vload(buf, start, lanes: int):
    return buf[T.Ramp(start, 1, lanes)] if lanes > 1 else buf[start]


def vstore(buf, start, value, lanes: int) -> None:
    T.buffer_store(buf, value, [T.Ramp(start, 1, lanes)] if lanes > 1 else [start])


def shuffle(vectors, idx) -> tirx.Expr:
    return tirx.Shuffle(list(vectors), [imm(int(i)) for i in idx])


def bcast(v, lanes: int) -> tirx.Expr:
    return T.Broadcast(v, lanes)


def splat(v, dtype: str, lanes: int) -> tirx.Expr:
    return T.Broadcast(tirx.const(v, dtype), lanes)


def reduce_tree(v, lanes: int, op):
    """Reduce the lanes of v pairwise (halves, then quarters, ...); each level is bound once, since an unbound
    vector used twice per level grows the expression 2^levels times (and TVM's passes with it)."""
    while lanes > 1:
        h = lanes // 2
        v = T.bind(v)
        v = op(shuffle([v], range(h)), shuffle([v], range(h, lanes)))
        lanes = h
    return v


def butterfly(rows: list, rounds) -> list:
    """Rounds of a register transpose: in round h, vectors r and r + h (bit h of r clear) swap their off-diagonal
    h x h blocks, each new vector one two-source shuffle, each round bound once. Rounds 8, 4, 2, 1 transpose 16
    vectors of 16 words; rounds 4, 2, 1 over 8 vectors transpose both 8 x 8 halves of their lanes at once."""
    v = list(rows)
    for h in rounds:
        nxt = list(v)
        for r in range(len(v)):
            if r & h:
                continue
            lo = [c if not c & h else 16 + c - h for c in range(16)]
            hi = [c + h if not c & h else 16 + c for c in range(16)]
            nxt[r] = T.bind(shuffle([v[r], v[r + h]], lo))
            nxt[r + h] = T.bind(shuffle([v[r], v[r + h]], hi))
        v = nxt
    return v


def transpose16(rows: list) -> list:
    """The 16 x 16 transpose of 16 vectors of 16 words (``butterfly``, four rounds)."""
    return butterfly(rows, (8, 4, 2, 1))


def reduce_vectors(vs: list, op):
    """``op`` over the vectors lane by lane, pairwise (an odd one out passes to the next level)."""
    while len(vs) > 1:
        vs = [op(vs[i], vs[i + 1]) if i + 1 < len(vs) else vs[i] for i in range(0, len(vs), 2)]
    return vs[0]


def hsum(v, lanes: int):
    return reduce_tree(v, lanes, lambda a, b: a + b)


def f16_to_f32(bits, lanes: int):
    """f32 of IEEE half bits held in int16 lanes (vcvtph2ps)."""
    if lanes == 1:
        return T.Cast("float32", T.reinterpret("float16", bits))
    return T.Cast(f"float32x{lanes}", T.reinterpret(f"float16x{lanes}", bits))


def cvt_bf16x32(hi, lo):
    """32 bf16 (nearest even; denormals to zero) of two f32x16 vectors, lo's 16 values then hi's: one
    ``vcvtne2ps2bf16`` (AVX512_BF16). Typed int16x32 for TVM, which has no LLVM bf16 type, while LLVM sees the
    intrinsic's own ``<32 x bfloat>``."""
    return T.call_llvm_pure_intrin("int16x32", "llvm.x86.avx512bf16.cvtne2ps2bf16.512", hi, lo)


# bf16 vectors as f32x16 words (each word a pair of bf16, the lower element in the low half). TVM 0.27 has no LLVM
# type for bf16: an int16x32 load handed to ``vdpbf16ps`` fails LLVM's verifier ("Call parameter type does not match
# function signature"), and a reinterpret to bfloat16 crashes its code generator. These two functions, linked into
# the kernel's LLVM module (``pragma_import_llvm``) and always inlined, do the bitcast there, so bf16 data can live
# in memory as words: loaded as plain vectors, or broadcast a pair at a time, which LLVM folds into the instruction's
# memory operand (``vdpbf16ps (mem){1to16}``). linkonce_odr: every kernel of a module imports them.
BF16_WORDS_LLVM = r"""
define linkonce_odr <16 x float> @sdcompile_dpbf16ps(<16 x float> %acc, <16 x float> %a, <16 x float> %b) alwaysinline {
  %a1 = bitcast <16 x float> %a to <32 x bfloat>
  %b1 = bitcast <16 x float> %b to <32 x bfloat>
  %r = call <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float> %acc, <32 x bfloat> %a1, <32 x bfloat> %b1)
  ret <16 x float> %r
}
define linkonce_odr <16 x float> @sdcompile_cvtne2ps2bf16(<16 x float> %hi, <16 x float> %lo) alwaysinline {
  %r = call <32 x bfloat> @llvm.x86.avx512bf16.cvtne2ps2bf16.512(<16 x float> %hi, <16 x float> %lo)
  %w = bitcast <32 x bfloat> %r to <16 x float>
  ret <16 x float> %w
}
declare <16 x float> @llvm.x86.avx512bf16.dpbf16ps.512(<16 x float>, <32 x bfloat>, <32 x bfloat>)
declare <32 x bfloat> @llvm.x86.avx512bf16.cvtne2ps2bf16.512(<16 x float>, <16 x float>)
"""


def importing_bf16_words():
    """The frame whose body may call ``dot_bf16_words`` and ``bf16_words`` (their LLVM definitions imported)."""
    return T.attr(0, "pragma_import_llvm", BF16_WORDS_LLVM)


def bf16_words(hi, lo):
    """``cvt_bf16x32(hi, lo)`` as 16 words of bf16 pairs (f32x16-typed): lo's values in words 0-7, hi's in 8-15."""
    return T.call_pure_extern("float32x16", "sdcompile_cvtne2ps2bf16", hi, lo)


def dot_bf16_words(acc, a, b):
    """``vdpbf16ps``: acc[i] + a.bf16[2i] b.bf16[2i] + a.bf16[2i+1] b.bf16[2i+1], a and b bf16 pairs as words."""
    return T.call_pure_extern("float32x16", "sdcompile_dpbf16ps", acc, a, b)


def float_weight(wtype: str, wf, w16, at, lanes: int):
    """``lanes`` values of a float weight from element ``at`` on, as f32: its f32 words (``wf``), or its f16 / bf16
    halves (``w16``, the same storage as int16); a bf16 value's bits are the top half of its f32."""
    if wtype == "f32":
        return vload(wf, at, lanes)
    bits = vload(w16, at, lanes)
    if wtype == "f16":
        return f16_to_f32(bits, lanes)
    return widen(T.reinterpret("uint16" if lanes == 1 else f"uint16x{lanes}", bits), lanes)


def vconst(values, dtype: str):
    """A constant vector (a shuffle of broadcasts, which LLVM folds into one constant)."""
    values = list(values)
    distinct = sorted(set(values))
    vecs = [splat(v, dtype, len(values)) for v in distinct]
    return shuffle(vecs, [distinct.index(v) * len(values) + i for i, v in enumerate(values)])


def load_f32(buf, idx: list, lanes: int = 1):
    """buf[idx] widened to f32 where the buffer holds 16-bit activations (``kernels/act.py``)."""
    return widen(buf[tuple(idx)] if len(idx) > 1 else buf[idx[0]], lanes)


def sixteen_lanes(lanes: int) -> bool:
    """Whether the kernels written in 16-lane f32 vectors (``cpu_fma`` and the others that ask) build well for a CPU
    of ``lanes`` f32 lanes (``tvm_layer.cpu_info``): AVX-512's 16, one zmm per vector, or AVX2's 8, where LLVM splits
    each vector into two ymm (the register-blocked kernels size their blocks to the 16 ymm: ``cpu_fma.MR_BY_NB``)."""
    return lanes in (8, 16)


def vector_regs(count: int):
    """``count`` f32x16 vectors in an LLVM alloca, which LLVM keeps in registers where every index into it is a
    constant (TVM would turn an allocation inside a parallel loop into a runtime workspace call)."""
    mem = T.bind(T.tvm_stack_alloca("shape", count * 8))
    return T.decl_buffer((count * 16,), "float32", data=mem)


MXCSR_FTZ_DAZ = 0x8040  # MXCSR's flush-to-zero (bit 15) and denormals-are-zero (bit 6)


def flushing_denormals(body) -> None:
    """``body()`` with this thread's MXCSR set to flush denormal results to zero and read denormal inputs as zero, then
    restored (it is per thread: call it inside each parallel task). Where a kernel's results can fall below f32's
    normal range (an exp far below the max), each such result otherwise costs a microcode assist of ~100 cycles: the
    f32 flash attention on SD1.5's 1,024 tokens took 1.5 s instead of 20 ms with logits spread over 40 octaves."""
    mem = T.bind(T.tvm_stack_alloca("shape", 1))  # 8 bytes: the saved MXCSR, then the one used
    mx = T.decl_buffer((2,), "int32", data=mem)
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.sse.stmxcsr", T.address_of(mx[0])))
    T.buffer_store(mx, mx[0] | T.int32(MXCSR_FTZ_DAZ), [1])
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.sse.ldmxcsr", T.address_of(mx[1])))
    body()
    T.evaluate(T.call_llvm_intrin("void", "llvm.x86.sse.ldmxcsr", T.address_of(mx[0])))


def cvt_bf16x16(v):
    """16 bf16 (nearest even; denormals to zero) of an f32x16 vector: one ``vcvtneps2bf16`` (AVX512_BF16), typed
    int16x16 for TVM as ``cvt_bf16x32``."""
    return T.call_llvm_pure_intrin("int16x16", "llvm.x86.avx512bf16.cvtneps2bf16.512", v)


def narrow_to(buf, v, lanes: int = 1):
    """f32 ``v`` rounded to ``buf``'s storage: f16, f32, or bf16 (whose buffers hold its bits as uint16). 16 lanes
    to bf16 by one ``vcvtneps2bf16`` where the target has AVX512_BF16, as ``narrow_pair`` (and with its flush of
    f32 denormals), instead of the integer rounding's ten operations (a 77-key attention's final pass spent 10% of
    the kernel in them)."""
    from schedules.cpu_amx import target_has

    dtype = "bfloat16" if buf.dtype == "uint16" else str(buf.dtype)
    if dtype == "bfloat16" and lanes == 16 and target_has("avx512bf16"):
        return T.reinterpret("uint16x16", cvt_bf16x16(v))
    return narrow(v, dtype, lanes)


def narrow_pair(buf, v0, v1):
    """32 f32 values, v0's 16 then v1's, rounded to ``buf``'s storage as one 32-lane vector. Stored at once, a 16-bit
    buffer's writes are whole 64-byte lines: written in halves, each line of a group norm's bf16 output cost more than
    its f32 one (SD1.5's VAE, 512x512 x 128: 35.2 ms against 16.9). bf16 by one ``vcvtne2ps2bf16`` where the target
    has AVX512_BF16 — nearest even as ``kernels/act.bf16_bits``, except that it flushes f32 denormals (below 2^-126) to
    zero, as every bf16 conversion of this hardware does (oneDNN's, PyTorch's vectorised one) — instead of the
    integer rounding's ten operations per 16 values, which made a SiLU group norm's output compute-bound."""
    from schedules.cpu_amx import target_has

    dtype = "bfloat16" if buf.dtype == "uint16" else str(buf.dtype)
    if dtype == "bfloat16" and target_has("avx512bf16"):
        return T.reinterpret("uint16x32", cvt_bf16x32(v1, v0))
    return shuffle([T.bind(narrow(v0, dtype, 16)), T.bind(narrow(v1, dtype, 16))], range(32))


def store_run(y, at, width: int, value) -> None:
    """Store ``width`` consecutive values of ``y`` (a multiple of 16): value(c), an f32x16, for the 16 from c on, at
    index ``at(c, lanes)``, rounded to y's storage. A 16-bit y whose width holds whole 32-value runs takes two
    vectors per store (``narrow_pair``: whole 64-byte lines), any other 16 at a time."""
    if y.dtype != "float32" and width % 32 == 0:
        with T.serial(0, width // 32) as c:
            T.buffer_store(y, narrow_pair(y, T.bind(value(32 * c)), T.bind(value(32 * c + 16))), at(32 * c, 32))
    else:
        with T.serial(0, width // 16) as c:
            T.buffer_store(y, narrow_to(y, T.bind(value(16 * c)), 16), at(16 * c, 16))


def parallel_rows(M: int, width: int, task_values: int, body) -> None:
    """body(m) for each row m < M, in parallel tasks of whole rows, at least ``task_values`` values (rows of
    ``width``) per task where M allows: fewer cost more in thread wake-ups than they save."""
    rows = max(1, min(M, task_values // width))
    with T.parallel(0, -(-M // rows)) as t:
        with T.serial(0, rows) as r:
            m = T.bind(t * rows + r)
            with T.If(m < M):
                with T.Then():
                    body(m)


def store_output(bufs: dict, act: str, m, n, v) -> None:
    """y[m, n] = act(v + bias[n]) + res[m, n], the fused epilogue (each part where the spec has it), rounded to
    y's storage dtype."""
    if "bias" in bufs:
        v = v + bufs["bias"][n]
    v = activation(act, v)
    if "res" in bufs:
        v = v + load_f32(bufs["res"], [m, n])  # scalar: n is one column
    y = bufs["y"]
    T.buffer_store(y, narrow_to(y, v), [m, n])


def output_vec(bufs: dict, act: str, m, n, v, lanes: int = 16):
    """act(v + bias) + res for y[m, n:n+lanes], the fused epilogue on a vector of consecutive outputs, in f32."""
    if "bias" in bufs:
        v = v + vload(bufs["bias"], n, lanes)
    v = activation(act, v)
    if "res" in bufs:
        v = v + load_f32(bufs["res"], [m, T.Ramp(n, 1, lanes)], lanes)
    return v


def store_output_vec(bufs: dict, act: str, m, n, v, lanes: int = 16) -> None:
    """y[m, n:n+lanes] = act(v + bias) + res (``output_vec``), rounded to y's storage (f16 by conversion, bf16 bits to
    nearest even)."""
    y = bufs["y"]
    T.buffer_store(y, narrow_to(y, output_vec(bufs, act, m, n, v, lanes), lanes), [m, T.Ramp(n, 1, lanes)])


def store_output_pair(bufs: dict, act: str, m, n, v0, v1) -> None:
    """y[m, n:n+32] through the fused epilogue from two f32x16 vectors, rounded to y's 16-bit storage and stored at
    once (``narrow_pair``: whole 64-byte lines)."""
    a0 = T.bind(output_vec(bufs, act, m, n, v0))
    a1 = T.bind(output_vec(bufs, act, m, n + 16, v1))
    T.buffer_store(bufs["y"], narrow_pair(bufs["y"], a0, a1), [m, T.Ramp(n, 1, 32)])


def prefetch(ptr, write: bool = False, locality: int = 3) -> None:
    """A software prefetch of the cache line at ``ptr`` (``T.address_of``): ``prefetchw`` where ``write`` (the line
    comes in owned, ready for stores), else ``prefetcht0`` (locality 3) to ``prefetchnta`` (0). It never faults."""
    T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch", ptr, imm(int(write)), imm(locality), imm(1)))


def prefetch_outputs(bufs: dict, m0, rows: int, n0, cols: int, M: int) -> None:
    """Prefetch what ``store_output_vec`` will touch for rows m0 .. m0 + rows - 1 (those below M) and columns n0 ..
    n0 + cols - 1: y's lines for writing, the residual's for reading. A GEMM's epilogue writes a strip of columns
    per tile job, one or two lines per row a full row apart, which the hardware prefetchers do not follow: every
    store waited for its line to come from memory (SD1.5's 8192 x 320 -> 2560 linear in bf16 products: 1.36-2.0x
    faster with the strip prefetched while the job's products run, ``cpu_amx_bf16``)."""
    for name, write in (("y", True), ("res", False)):
        if name not in bufs:
            continue
        buf = bufs[name]
        step = max(1, 512 // buf.dtype.bits)  # values per 64-byte cache line
        for r in range(rows):
            m = T.min(m0 + r, M - 1)
            for c in range(0, cols, step):
                prefetch(T.address_of(buf[m, n0 + c]), write)


def prim_func(spec: KernelSpec, params: list, emit) -> tirx.PrimFunc:
    """A PrimFunc named for ``spec`` over the given parameter buffers (``spec.params`` order), whose body
    ``emit(bufs)`` writes with the IR builder (bufs: parameter name -> buffer)."""
    names = [p.name for p in spec.params]
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name(spec.name)
            T.func_attr({"tirx.noalias": True})
            emit({n: T.arg(n, b) for n, b in zip(names, params)})
    return ib.get()


def replace_body(sch: s_tir.Schedule, spec: KernelSpec, build_fn) -> None:
    """Replace the scheduled function's body (``sch.work_on`` selected it) with ``build_fn(spec, params)``'s."""
    func = build_fn(spec, list(sch.mod[spec.name].params))
    root = sch.get_sblock("root")
    sch.state.replace(sch.get_sref(root), s_tir.stmt.SBlock([], [], [], "root", func.body))


def start_sums(acc, count: int, passes: int, kc, part, at) -> None:
    """``count`` f32x16 sums in ``acc`` (an LLVM alloca kept in registers) before pass ``kc`` of K: zeros at the first
    (or only) pass, else what the earlier passes left in ``part[at:]``."""

    def zero() -> None:
        for i in range(count):
            vstore(acc, 16 * i, splat(0.0, "float32", 16), 16)

    if passes == 1:
        zero()
        return
    with T.If(kc == 0):
        with T.Then():
            zero()
        with T.Else():
            for i in range(count):
                vstore(acc, 16 * i, vload(part, at + 16 * i, 16), 16)


def last_pass(passes: int, kc, body) -> None:
    """``body()`` where pass ``kc`` of ``passes`` is the last."""
    if passes == 1:
        body()
        return
    with T.If(kc == passes - 1):
        with T.Then():
            body()


def end_sums(acc, count: int, passes: int, kc, part, at, epilogue) -> None:
    """After pass ``kc``: the sums wait in ``part[at:]`` for the next pass, or after the last go through
    ``epilogue()``."""
    if passes == 1:
        epilogue()
        return
    with T.If(kc < passes - 1):
        with T.Then():
            for i in range(count):
                vstore(part, at + 16 * i, vload(acc, 16 * i, 16), 16)
        with T.Else():
            epilogue()
