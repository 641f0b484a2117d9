"""MetaSchedule on one kernel, and the measurement that decides whether its result beats the built-in rule.

TVM's tuning API (``tvm.s_tir.meta_schedule``) is used here and nowhere else. A kernel's unscheduled PrimFunc (its TE
compute) is the workload; MetaSchedule's default rule sets for LLVM or CUDA generate candidates, which are built in
this process and run by TVM's own runners: ``LocalRunner`` on this machine, ``RPCRunner`` on the devices an RPC
tracker hands out (a workstation tuning for a device it does not have). Vulkan candidates are WGSL run through wgpu,
as the runtime runs them, by a runner of our own.

The decision is not MetaSchedule's: the best few candidates are compiled beside the built-in rule's kernel, both run
on the same inputs on the same device, interleaved, and a candidate wins only when its outputs agree with the
reference (or with the built-in kernel's, for ops without a float64 reference here) and its median time is lower
by the asked margin.
"""

from __future__ import annotations

import os
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdcompile.errors import OptionError, ToolchainError
from sdcompile.kernels.spec import KernelSpec


def check_toolchain() -> None:
    """MetaSchedule copies IR through TVM's JSON serialization, which apache-tvm-ffi 0.1.15 crashes (a segfault in
    ToJSONGraph) under TVM 0.27; refuse before that happens."""
    import tvm_ffi

    parts = [int(p) for p in str(tvm_ffi.__version__).split(".post")[0].split(".")[:3] if p.isdigit()]
    if parts[:2] == [0, 1] and len(parts) > 2 and parts[2] >= 15:
        raise ToolchainError(
            f"apache-tvm-ffi {tvm_ffi.__version__} crashes TVM 0.27's IR serialization, which tuning needs; install "
            "apache-tvm-ffi==0.1.14.post0 (pyproject.toml pins it; scripts/setup.sh installs it)"
        )


# --- where candidates run ------------------------------------------------------------------------------------------


@dataclass
class Rpc:
    host: str
    port: int
    key: str
    timeout_s: int = 120

    def session(self):
        from tvm import rpc

        try:
            tracker = rpc.connect_tracker(self.host, self.port)
        except Exception as e:  # TVM raises its own error types for refused and unreachable trackers
            raise ToolchainError(f"--rpc-tracker {self.host}:{self.port}: cannot connect ({e})") from None
        if not any(s["key"].split(":")[-1] == self.key for s in tracker.summary().get("server_info", [])):
            raise ToolchainError(
                f"--rpc-key {self.key}: the tracker at {self.host}:{self.port} has no free server with that key; "
                "start one with `python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`"
            )
        return tracker.request(self.key, priority=1, session_timeout=self.timeout_s)

    def servers(self) -> int:
        from tvm import rpc

        summary = rpc.connect_tracker(self.host, self.port).summary()
        return sum(1 for s in summary.get("server_info", []) if s["key"].split(":")[-1] == self.key)


@dataclass
class Device:
    """The device tuned for: its target, the TVM target dict code is generated for, and its machine folder."""

    target: str  # cpu | cuda | vulkan
    tvm_target: dict
    machine: str
    name: str  # the CPU or GPU model in words
    rpc: Rpc | None = None
    threads: int | None = None
    info: dict = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "cpu" if self.target == "cpu" else "gpu"


def open_device(target: str, rpc: Rpc | None, threads: int | None) -> Device:
    """Identify the device tuned for; over RPC, ask the remote (its CPU name or GPU) through one session."""
    from sdcompile.codegen import tvm_layer
    from sdcompile.tuning import records

    if target == "cpu":
        if rpc is None:
            t = tvm_layer.cpu_target(num_cores=threads or _cores())
            from runtime.executors.cpu import _cpu_model

            return Device("cpu", t, records.cpu_machine(t), _cpu_model() or t["mcpu"], None, threads)
        sess = rpc.session()
        try:
            mcpu = str(sess.get_function("target.llvm_get_system_cpu")())
        except Exception:
            raise ToolchainError(
                "the RPC server cannot name its CPU (it runs TVM's runtime alone); run it with the full TVM package"
            ) from None
        t = tvm_layer.cpu_target(mcpu, num_cores=threads or _cores())
        return Device("cpu", t, records.cpu_machine(t), mcpu, rpc, threads)
    if target == "cuda":
        import tvm

        dev = rpc.session().cuda(0) if rpc else tvm.cuda(0)
        if not dev.exist:
            raise ToolchainError(
                "no CUDA device " + ("on the RPC server" if rpc else "here") + ": tune on a machine with one, or "
                "through --rpc-tracker/--rpc-key on one that has it"
            )
        major, minor = str(dev.compute_version).split(".")[:2]
        name = str(dev.device_name)
        t = tvm_layer.gpu_target("cuda", f"sm_{major}{minor}") | {"max_threads_per_block": tvm_layer.GPU_MAX_THREADS}
        return Device("cuda", t, records.slug(name), name, rpc)
    if target == "vulkan":
        if rpc is not None:
            raise OptionError("--rpc-tracker: Vulkan kernels run through wgpu, not TVM's runtime; tune on the device")
        from runtime.executors.vulkan import find_adapter

        adapter = find_adapter()
        if adapter is None:
            raise ToolchainError("no Vulkan adapter here (install a Vulkan driver, e.g. mesa-vulkan-drivers, and wgpu)")
        name = str(adapter.info.get("device", ""))
        # MetaSchedule's GPU rules read limits a WebGPU target cannot state (max_threads_per_block); they search
        # against TVM's Vulkan target kind with WebGPU's limits, and candidates are lowered to WGSL (_build_wgsl).
        t = {
            "kind": "vulkan",
            "max_threads_per_block": tvm_layer.GPU_MAX_THREADS,
            "max_num_threads": tvm_layer.GPU_MAX_THREADS,
            "max_shared_memory_per_block": tvm_layer.GPU_MAX_SHARED_BYTES,
            "thread_warp_size": 1,
            "host": {"kind": "llvm"},
        }
        return Device("vulkan", t, records.slug(name), name)
    raise OptionError(f"unknown target {target!r}; choose cpu, vulkan or cuda")


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# --- MetaSchedule --------------------------------------------------------------------------------------------------


def _builder(device: Device, work: Path):
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class InProcessBuilder(ms.builder.PyBuilder):
        """Builds candidates in this process. TVM's LocalBuilder sends each module to a worker process through
        TVM's serialization; building here costs the same on a small machine and keeps one compiler loaded."""

        def build(self, build_inputs):
            results = []
            for bi in build_inputs:
                # one folder per candidate: the runner's cleanup removes the folder of each artifact it ran
                out = Path(tempfile.mkdtemp(prefix="cand-", dir=work))
                try:
                    if device.target == "vulkan":
                        path = _build_wgsl(bi.mod, out)
                    else:
                        path = out / "cand.so"
                        tvm.compile(bi.mod, target=bi.target).export_library(str(path))
                    results.append(ms.builder.BuilderResult(str(path), None))
                except Exception as e:  # a candidate that does not build is a failed trial, not a failed tune
                    shutil.rmtree(out, ignore_errors=True)
                    results.append(ms.builder.BuilderResult(None, f"{type(e).__name__}: {e}"))
            return results

    return InProcessBuilder()


def _build_wgsl(mod, out: Path) -> Path:
    """A candidate for Vulkan: its WGSL and launch geometry, as the artifact stores them."""
    import json

    from sdcompile.codegen import tvm_layer

    func = mod["main"]
    params = [str(p.name) for p in func.params]
    source, launch = tvm_layer.lower_gpu_module(tvm_layer.tvm.IRModule({"main": func}), "webgpu", {"main": params})
    shaders = tvm_layer.split_wgsl(source)
    for entry in launch["main"]:
        (out / f"{entry['entry']}.wgsl").write_text(shaders[entry["entry"]], encoding="utf-8")
        entry["file"] = f"{entry['entry']}.wgsl"
    (out / "launch.json").write_text(json.dumps(launch["main"]), encoding="utf-8")
    return out / "launch.json"


def _runner(device: Device, evaluator, spec: KernelSpec):
    from tvm.s_tir import meta_schedule as ms

    if device.target == "vulkan":
        return _vulkan_runner(spec)
    if device.rpc is not None:
        cfg = ms.runner.RPCConfig(
            tracker_host=device.rpc.host,
            tracker_port=device.rpc.port,
            tracker_key=device.rpc.key,
            session_timeout_sec=device.rpc.timeout_s,
        )
        return ms.runner.RPCRunner(cfg, evaluator, max_workers=max(1, device.rpc.servers()))
    return ms.runner.LocalRunner(evaluator)


def _tune_context(mod, device: Device, seed: int, name: str):
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule import _ffi_api
    from tvm.s_tir.meta_schedule.logging import get_logger, get_logging_func

    rules = "llvm" if device.kind == "cpu" else "cuda"
    # The default rule sets without tensor intrinsics: every kernel computes in f32, and the x86 defaults' int8
    # dot-product rules need TVM's whole intrinsic library registered, which TuneContext's constructor imports
    # (25-40 s on two cores) before anything is tuned. The context is therefore made through its FFI constructor.
    space = ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=rules, mutator_probs=rules)
    strategy = ms.search_strategy.SearchStrategy.create("evolutionary")
    ctx = ms.TuneContext.__new__(ms.TuneContext)
    ctx.__init_handle_by_constructor__(
        _ffi_api.TuneContext,
        mod,
        tvm.target.Target(device.tvm_target),
        space,
        strategy,
        name,
        _cores(),
        seed,
        get_logging_func(get_logger("sdcompile.tune")),
    )
    _ffi_api.TuneContextInitialize(ctx)
    return ctx


def search(spec: KernelSpec, device: Device, trials: int, work: Path, seed: int = 1, keep: int = 3) -> list[dict]:
    """Run MetaSchedule on ``spec`` for ``trials`` measured candidates; the ``keep`` fastest as
    [{"trace": JSON trace, "ms_run_s": MetaSchedule's own measurement}], fastest first."""
    from tvm.s_tir import meta_schedule as ms

    from sdcompile.codegen import tvm_layer

    mod = _without_lets(tvm_layer.tuning_workload(spec))
    work.mkdir(parents=True, exist_ok=True)
    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20, enable_cpu_cache_flush=False)
    database = ms.database.MemoryDatabase()
    try:
        import xgboost  # noqa: F401 - the learned cost model needs it; with few trials a random one loses little

        cost_model = "xgb"
    except ImportError:
        cost_model = "random"
    env = _thread_env(device)
    try:
        ms.tune.tune_tasks(
            tasks=[_tune_context(mod, device, seed, spec.name)],
            task_weights=[1.0],
            work_dir=str(work),
            max_trials_global=trials,
            num_trials_per_iter=min(trials, 16),
            builder=_builder(device, work),
            runner=_runner(device, evaluator, spec),
            database=database,
            cost_model=cost_model,
            task_scheduler="round-robin",
        )
    finally:
        _restore_env(env)
    found = []
    for rec in database.get_top_k(database.commit_workload(mod), keep):
        secs = [float(s) for s in rec.run_secs or []]
        found.append(
            {"trace": tvm_layer.trace_to_json(rec.trace), "ms_run_s": statistics.median(secs) if secs else None}
        )
    return found


def _without_lets(mod):
    """The workload with every Let inlined into its uses. MetaSchedule's task scheduler estimates each task's FLOPs
    and has no rule for Let (kernels bind a value once where an epilogue reads it twice: gelu, silu); the loops and
    blocks, which is all a trace refers to, are unchanged, so the trace found here replays on the original."""
    import tvm
    import tvm_ffi
    from tvm import tirx

    def inline(let):
        return tvm_ffi.structural_map(let.body, (type(let.var), lambda v: let.value if v.same_as(let.var) else v))

    return tvm.IRModule({"main": tvm_ffi.structural_map(mod["main"], (tirx.Let, inline))})


def _thread_env(device: Device) -> str | None:
    """LocalRunner's workers size TVM's thread pool from TVM_NUM_THREADS (its default on a small machine can be 1)."""
    if device.target != "cpu" or device.rpc is not None:
        return None
    old = os.environ.get("TVM_NUM_THREADS")
    os.environ["TVM_NUM_THREADS"] = str(device.threads or _cores())
    return old if old is not None else ""


def _restore_env(old: str | None) -> None:
    if old is None:
        return
    if old == "":
        os.environ.pop("TVM_NUM_THREADS", None)
    else:
        os.environ["TVM_NUM_THREADS"] = old


# --- inputs and the numerical check ------------------------------------------------------------------------------


def _buffer_dtypes(func) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of each parameter buffer, in order (what the kernel's code takes)."""
    return [(str(p.name), tuple(int(d) for d in p.shape), str(p.dtype)) for p in func.params]


def inputs_for(spec: KernelSpec, func, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray | None, Any]:
    """Inputs in parameter order (outputs excluded), and a float64 reference with its tolerance where the kernel
    check has one (linear, conv2d and embed with f32 activations), else (inputs, None, None)."""
    from sdcompile.kernels import check

    params = spec.params
    if spec.op in ("linear", "conv2d", "embed") and spec.attr("dt") is None:
        xs, ref, tol = check.case(spec, seed)
        if len(xs) == sum(not p.is_output for p in params):  # the check's plain kernel: no bias, residual, act
            return [np.asarray(x) for x in xs], ref, tol
    from sdcompile.kernels.luts import table_words
    from sdcompile.quant.samples import sample_raw

    rng = np.random.default_rng([seed, *map(ord, spec.name)])
    xs = []
    for p, (_, shape, dtype) in zip(params, _buffer_dtypes(func)):
        if p.is_output:
            continue
        if p.kind == "lut":
            xs.append(np.asarray(table_words(p.name), np.uint32))
        elif p.kind == "raw":
            xs.append(check._words(sample_raw(p.dtype, p.shape, rng)))
        elif dtype == "int32":
            bound = int(spec.attr("V") or 1000)
            xs.append(rng.integers(0, bound, shape).astype(np.int32))
        elif p.dtype == "bfloat16":  # bf16 activations travel as their bits (kernels/act.py)
            v = rng.standard_normal(shape).astype(np.float32)
            xs.append((v.view(np.uint32) >> 16).astype(np.uint16))
        else:
            xs.append(rng.standard_normal(shape).astype(dtype))
    return xs, None, None


def _as_f64(a: np.ndarray, param) -> np.ndarray:
    if param.dtype == "bfloat16":
        return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return a.astype(np.float64)


def compare(spec: KernelSpec, tuned: list[np.ndarray], builtin: list[np.ndarray], ref, tol) -> tuple[bool, float]:
    """Whether the tuned kernel's outputs equal the built-in kernel's numerically, and the worst error as a multiple
    of the tolerance: against the float64 reference where there is one (both must pass), else against the built-in
    kernel's outputs with the op cases' tolerance (f32 rounding of a different summation order, one rounding to a
    16-bit storage type)."""
    from sdcompile.kernels import op_cases

    outs = [p for p in spec.params if p.is_output]
    worst = 0.0
    for t, b, p in zip(tuned, builtin, outs):
        t64, b64 = _as_f64(t, p), _as_f64(b, p)
        if ref is not None:
            bound = tol
            err = np.abs(t64 - ref)
        else:
            bound = 2 * np.broadcast_to(op_cases.tolerance(b64, p.dtype), b64.shape)
            err = np.abs(t64 - b64)
        finite = np.isfinite(b64)
        if not np.array_equal(finite, np.isfinite(t64)):
            return False, float("inf")
        ratio = np.where(finite, err / np.maximum(bound, np.finfo(np.float64).tiny), 0.0)
        worst = max(worst, float(ratio.max(initial=0.0)))
    return worst <= 1.0, worst


# --- head-to-head measurement --------------------------------------------------------------------------------------


@dataclass
class Measurement:
    builtin_s: float
    tuned_s: float
    equal: bool
    error_ratio: float
    builtin_runs: list[float]
    tuned_runs: list[float]


def measure(spec: KernelSpec, device: Device, trace: list, rounds: int = 5, work: Path | None = None) -> Measurement:
    """Time the built-in rule's kernel and the traced one on the same inputs on the device, ``rounds`` times each,
    interleaved (a machine whose load changes meanwhile disturbs both alike); medians and the numerical check."""
    import tvm

    from sdcompile.codegen import tvm_layer

    builtin = tvm_layer.scheduled_module([spec], device.kind, device.tvm_target if device.kind == "cpu" else None)
    funcs = {
        "builtin": builtin[spec.name].with_attr("global_symbol", "builtin"),
        "tuned": tvm_layer.replay_trace(spec, trace).with_attr("global_symbol", "tuned"),
    }
    xs, ref, tol = inputs_for(spec, funcs["builtin"])
    if device.target == "vulkan":
        return _measure_vulkan(spec, funcs, xs, ref, tol, rounds)
    work = Path(work or tempfile.mkdtemp(prefix="sdcompile-measure-"))
    work.mkdir(parents=True, exist_ok=True)
    lib = work / f"{spec.name}.so"
    tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target(device.tvm_target)).export_library(str(lib))
    sess = device.rpc.session() if device.rpc else None
    if sess is not None:
        sess.upload(str(lib))
        mod = sess.load_module(lib.name)
        dev = sess.cpu(0) if device.target == "cpu" else sess.cuda(0)
    else:
        mod = tvm.runtime.load_module(str(lib))
        dev = tvm.cpu(0) if device.target == "cpu" else tvm.cuda(0)
        if device.target == "cpu":
            from runtime.executors.cpu import set_num_threads

            set_num_threads(tvm, device.threads)
    outs = [p for p in spec.params if p.is_output]
    shapes = _buffer_dtypes(funcs["builtin"])[len(xs) :]
    results: dict[str, list[np.ndarray]] = {}
    args: dict[str, list] = {}
    for name in ("builtin", "tuned"):
        nan = [np.full(s, np.nan, np.float32).astype(d) for (_, s, d) in shapes]  # an element never written shows
        args[name] = [tvm.runtime.tensor(a, dev) for a in xs] + [tvm.runtime.tensor(a, dev) for a in nan]
        mod[name](*args[name])
        dev.sync()
        results[name] = [a.numpy() for a in args[name][len(xs) :]]
    assert len(results["tuned"]) == len(outs)
    equal, ratio = compare(spec, results["tuned"], results["builtin"], ref, tol)
    timers = {n: mod.time_evaluator(n, dev, number=1, repeat=1, min_repeat_ms=50) for n in ("builtin", "tuned")}
    runs: dict[str, list[float]] = {"builtin": [], "tuned": []}
    for _ in range(rounds):
        for name in ("builtin", "tuned"):
            runs[name].append(float(timers[name](*args[name]).mean))
    shutil.rmtree(work, ignore_errors=True)
    return Measurement(
        statistics.median(runs["builtin"]),
        statistics.median(runs["tuned"]),
        equal,
        ratio,
        runs["builtin"],
        runs["tuned"],
    )


# --- Vulkan (wgpu) --------------------------------------------------------------------------------------------------


def _vulkan_executor(kernels: dict, folder: Path):
    from runtime.executors.vulkan import Executor

    return Executor(folder, kernels)


def _vulkan_kernel_record(spec: KernelSpec, name: str, launch: list[dict]) -> dict:
    from sdcompile.codegen.build import _kernel_info

    return {name: _kernel_info(spec, [dict(sorted(e.items())) for e in launch])}


def _vulkan_time(ex, spec: KernelSpec, name: str, xs: list[np.ndarray], number: int = 5) -> tuple[float, list]:
    """Seconds per launch (wall clock over ``number`` launches and one synchronisation), and the outputs."""
    import time

    args = []
    for a in xs:
        buf = ex.alloc(max(a.nbytes, 4))
        ex.upload(buf, a)
        args.append((buf, a.shape, str(a.dtype)))
    outs = [p for p in spec.params if p.is_output]
    for p in outs:
        nan = np.full(p.shape, np.nan, np.float32).astype(_np_dtype(p))
        buf = ex.alloc(max(nan.nbytes, 4))
        ex.upload(buf, nan)
        args.append((buf, p.shape, p.dtype))
    ex.launch(name, args)
    ex.synchronize()
    got = [ex.download(a[0], p.shape, _np_dtype(p)) for a, p in zip(args[len(xs) :], outs)]
    t0 = time.perf_counter()
    for _ in range(number):
        ex.launch(name, args)
    ex.synchronize()
    secs = (time.perf_counter() - t0) / number
    for a in args:
        ex.free(a[0])
    return secs, got


def _np_dtype(p) -> str:
    return "uint16" if p.dtype == "bfloat16" else p.dtype


def _measure_vulkan(spec: KernelSpec, funcs: dict, xs, ref, tol, rounds: int) -> Measurement:
    from sdcompile.codegen import tvm_layer

    folder = Path(tempfile.mkdtemp(prefix="sdcompile-measure-"))
    kernels: dict = {}
    for name, f in funcs.items():
        params = [p.name for p in spec.params]
        source, launch = tvm_layer.lower_gpu_module(tvm_layer.tvm.IRModule({name: f}), "webgpu", {name: params})
        shaders = tvm_layer.split_wgsl(source)
        for entry in launch[name]:
            entry["file"] = f"{entry['entry']}.wgsl"
            (folder / entry["file"]).write_text(shaders[entry["entry"]], encoding="utf-8")
        kernels.update(_vulkan_kernel_record(spec, name, launch[name]))
    try:
        ex = _vulkan_executor(kernels, folder)
        runs: dict[str, list[float]] = {"builtin": [], "tuned": []}
        got: dict[str, list] = {}
        for _ in range(rounds):
            for name in ("builtin", "tuned"):
                secs, got[name] = _vulkan_time(ex, spec, name, xs)
                runs[name].append(secs)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    equal, ratio = compare(spec, got["tuned"], got["builtin"], ref, tol)
    return Measurement(
        statistics.median(runs["builtin"]),
        statistics.median(runs["tuned"]),
        equal,
        ratio,
        runs["builtin"],
        runs["tuned"],
    )


def _vulkan_runner(spec: KernelSpec):
    """MetaSchedule's runner for Vulkan candidates: each built candidate's WGSL run through wgpu in this process,
    on random inputs in the kernel's parameter layout."""
    import json

    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    xs: list[np.ndarray] | None = None

    @derived_object
    class Done(ms.runner.PyRunnerFuture):
        def __init__(self, result):
            super().__init__()
            self._result = result

        def done(self) -> bool:
            return True

        def result(self):
            return self._result

    @derived_object
    class VulkanRunner(ms.runner.PyRunner):
        def run(self, runner_inputs):
            nonlocal xs
            futures = []
            for ri in runner_inputs:
                path = Path(str(ri.artifact_path))
                try:
                    launch = json.loads(path.read_text(encoding="utf-8"))
                    kernels = _vulkan_kernel_record(spec, "cand", launch)
                    ex = _vulkan_executor(kernels, path.parent)
                    if xs is None:
                        from sdcompile.codegen import tvm_layer

                        xs = inputs_for(spec, tvm_layer.prim_func(spec))[0]
                    secs = [_vulkan_time(ex, spec, "cand", xs, number=3)[0] for _ in range(3)]
                    result = ms.runner.RunnerResult(secs, None)
                except Exception as e:  # a candidate the device refuses is a failed trial
                    result = ms.runner.RunnerResult(None, f"{type(e).__name__}: {e}")
                futures.append(Done(result))
            return futures

    return VulkanRunner()
