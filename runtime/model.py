"""Load an artifact and run its plan. Imports nothing from `sdcompile`: only numpy, gguf and the backend's library.

Loading first checks the manifest (``runtime/manifest.py``: its digest, a signature where trusted keys are given,
that every path stays inside the artifact, that the plan is consistent) and every file's hash; then it probes the
device and selects the build for it (refusing with a clear message when none fits), checks memory, uploads the
weights (and the lookup tables some weight types decode through) once and allocates the planned buffer slots. `run` splits a batch larger than the compiled one into compiled-size chunks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import RuntimeFailure
from runtime.manifest import verify_files, verify_manifest

__all__ = ["DeviceTensor", "Model", "load", "read_manifest", "verify_files"]

# 3: the manifest carries a digest of itself (and may carry a signature); a version-2 manifest has none, so it
# cannot be checked for edits and is refused.
SUPPORTED_FORMAT_VERSIONS = (3,)


def read_manifest(path: Path) -> dict[str, Any]:
    """The artifact's manifest, checked (digest, paths, plan: ``verify_manifest`` without the file hashes), for
    callers that look at it before loading the model."""
    m = _parse_manifest(path)
    verify_manifest(path, m, files=False)
    return m


def _parse_manifest(path: Path) -> dict[str, Any]:
    mf = Path(path) / "manifest.json"
    if not mf.is_file():
        raise RuntimeFailure(
            f"{path}: not an sdcompile artifact (no manifest.json); pass the directory `compile -o` wrote"
        )
    try:
        m = json.loads(mf.read_text())
    except (OSError, ValueError) as e:
        raise RuntimeFailure(f"{mf}: unreadable manifest ({e}); recompile the model") from None
    if not isinstance(m, dict):
        raise RuntimeFailure(f"{mf}: the manifest is not a JSON object; recompile the model")
    if m.get("format") != "sdcompile-artifact" or m.get("format_version") not in SUPPORTED_FORMAT_VERSIONS:
        raise RuntimeFailure(
            f"{mf}: artifact format {m.get('format')!r} version {m.get('format_version')!r} is not supported by this "
            f"runtime (supports {SUPPORTED_FORMAT_VERSIONS}); recompile with a matching sdcompile"
        )
    return m


def _make_executor(path: Path, manifest: dict[str, Any], num_threads: int | None):
    target = manifest["target"]
    kernels = manifest["kernels"]
    if target == "cpu":
        from runtime.executors.cpu import Executor
    elif target == "vulkan":
        from runtime.executors.vulkan import Executor
    elif target == "cuda":
        from runtime.device import probe_cuda, select_cuda_build

        devices = probe_cuda()
        if not devices:
            raise RuntimeFailure(
                f"{path}: this artifact was compiled for CUDA but no CUDA device was found (no NVIDIA driver or GPU); "
                "run it on a machine with an NVIDIA GPU, or recompile with --target cpu or --target vulkan"
            )
        select_cuda_build(kernels["build"], devices[0])  # raises NoCompatibleBuild naming both sides
        from runtime.executors.cuda import Executor
    else:
        raise RuntimeFailure(f"{path}: unknown target {target!r} in manifest")
    return Executor(path, kernels, num_threads=num_threads)


def _words(raw: np.ndarray) -> np.ndarray:
    b = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
    pad = (-b.size) % 4
    if pad:
        b = np.concatenate([b, np.zeros(pad, np.uint8)])
    return b.view(np.uint32)


class DeviceTensor:
    """A function's output left on the device: pass it as another call's input and no bytes cross to the host.
    It stays valid until the function that produced it runs again."""

    __slots__ = ("buffer", "shape", "dtype")

    def __init__(self, buffer, shape: tuple[int, ...], dtype: str) -> None:
        self.buffer, self.shape, self.dtype = buffer, tuple(shape), dtype


class Model:
    """A loaded artifact: a module of functions sharing weights and slot buffers.

    ``call(fn, inputs)`` runs one function; ``run(inputs)`` runs the only function (a text encoder's
    ``encode_text``), splitting a larger batch into compiled-size chunks.

    ``trusted_keys`` (Ed25519 public key files in PEM, as `sdcompile keygen` writes them): refuse an artifact that
    is not signed by one of them. ``verify=False`` skips the manifest's digest and the file hashes (for a manifest
    edited by hand), never the path and plan checks; ``signer`` is the id of the trusted key that signed it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        num_threads: int | None = None,
        verify: bool = True,
        trusted_keys: list | None = None,
    ) -> None:
        self.path = Path(path)
        self.manifest = m = _parse_manifest(self.path)
        # Before anything the manifest names is opened: a kernel library is code that runs on load.
        self.signer = verify_manifest(self.path, m, digest=verify, files=verify, trusted_keys=trusted_keys)
        self.functions: dict[str, dict] = m["functions"]
        self.ex = _make_executor(self.path, m, num_threads)
        self.device = self.ex.device_info()
        self._check_memory()
        self._bound: dict = {}  # fn -> (input buffers, launches): ``_bound_steps``
        self._load_weights()
        self._load_luts()
        # Functions run one at a time, so they share slots: slot i is as large as its largest use.
        sizes: list[int] = []
        for f in self.functions.values():
            for i, n in enumerate(f["slots"]):
                if i == len(sizes):
                    sizes.append(0)
                sizes[i] = max(sizes[i], int(n))
        self.slots = [self.ex.alloc(n) for n in sizes]
        self.inputs: dict[str, dict[str, object]] = {}
        self.outputs: dict[str, dict[str, object]] = {}
        for fn, f in self.functions.items():
            self.inputs[fn] = {k: self.ex.alloc(_nbytes(v)) for k, v in f["inputs"].items()}
            self.outputs[fn] = {k: self.ex.alloc(_nbytes(v)) for k, v in f["outputs"].items()}
        self._kparams = {name: k["params"] for name, k in m["kernels"]["kernels"].items()}
        self._views: dict = {}
        self.loras = None  # runtime.lora.branch.RuntimeLoras: the LoRAs chosen at run time (set_loras)

    @property
    def plan(self) -> dict:
        """The plan of a single-function artifact (a text encoder)."""
        return self.functions[self._only()]

    def _only(self) -> str:
        if len(self.functions) != 1:
            raise RuntimeFailure(f"{self.path} holds functions {sorted(self.functions)}: name the one to run")
        return next(iter(self.functions))

    def _check_memory(self) -> None:
        peak = self.manifest["memory"]["peak_bytes"]
        avail = self.device.get("memory_bytes")
        if avail is not None and peak > avail:
            raise RuntimeFailure(
                f"{self.path}: needs {peak / 2**20:.1f} MiB at peak but {self.device.get('name', 'the device')} has "
                f"{avail / 2**20:.1f} MiB; recompile with a smaller --type or run on a larger device"
            )

    def _load_weights(self) -> None:
        """Open the weights file; upload every tensor now, or with offload (the manifest's memory plan) only the
        components the function about to run reads, freeing the others (``_need``)."""
        import gguf

        wf = self.path / self.manifest["weights"]["file"]
        try:
            # copy-on-write: pages stay shared with the file (the CPU executor adopts them without a copy)
            reader = gguf.GGUFReader(str(wf), "c")
        except Exception as e:  # the gguf package raises assorted errors for damaged files
            raise RuntimeFailure(f"{wf}: cannot read weights ({e}); recompile") from None
        want = self.manifest["weights"]["tensors"]
        self._tensors = {t.name: t for t in reader.tensors if t.name in want}
        missing = sorted(set(want) - set(self._tensors))
        if missing:
            raise RuntimeFailure(f"{wf}: weights {missing[:5]} are missing; recompile")
        self.offload = bool(self.manifest["memory"].get("offload"))
        self.weights: dict[str, object] = {}
        self._loaded: set[str] = set()
        if not self.offload:
            self._upload([n for n in want])

    def _upload(self, names: list[str]) -> None:
        adopt = getattr(self.ex, "adopt", None)  # the CPU reads the mapped file in place
        self._bound.clear()  # launches bound to the weights as they were
        for n in names:
            words = _words(np.asarray(self._tensors[n].data))
            if adopt is not None:
                self.weights[n] = adopt(words)
                continue
            buf = self.ex.alloc(words.nbytes)
            self.ex.upload(buf, words)
            self.weights[n] = buf

    def _need(self, fn: str) -> None:
        """With offload: make the weights of ``fn``'s components resident, and only those."""
        if not self.offload:
            return
        comps = set(self.manifest["memory"]["functions"][fn]["components"])
        if comps == self._loaded:
            return
        tensors = self.manifest["weights"]["tensors"]
        drop = [n for n, b in self.weights.items() if tensors[n].get("component") not in comps]
        if drop:
            self._bound.clear()  # bound launches would keep the dropped weights alive
            self.ex.synchronize()
            for n in drop:
                self.ex.free(self.weights.pop(n))
        self._upload([n for n, t in tensors.items() if t.get("component") in comps and n not in self.weights])
        self._loaded = comps

    def _load_luts(self) -> None:
        """Upload each lookup table the plan uses once (i-quant codebooks; the manifest's ``luts`` record; that every
        step's table exists with the size its kernel reads was checked with the plan)."""
        rec = self.manifest.get("luts") or {"tables": {}}
        self.luts = {}
        if rec["tables"]:
            lf = self.path / rec["file"]
            try:
                data = np.fromfile(lf, dtype="<u4")
            except OSError as e:
                raise RuntimeFailure(f"{lf}: cannot read lookup tables ({e}); recompile") from None
            for name, t in sorted(rec["tables"].items()):
                start, n = int(t["offset"]), int(t["words"])
                if start % 4 or start // 4 + n > data.size:
                    raise RuntimeFailure(f"{lf}: table {name!r} lies outside the file; recompile")
                words = np.ascontiguousarray(data[start // 4 : start // 4 + n])
                buf = self.ex.alloc(words.nbytes)
                self.ex.upload(buf, words)
                self.luts[name] = (buf, n)

    def step_args(self, fn: str, step: dict, bound: dict) -> list:
        """The (buffer, shape, dtype) arguments of one step of ``fn``, with its inputs bound to ``bound``."""
        return [self._arg(fn, ref, p, bound) for ref, p in zip(step["args"], self._kparams[step["kernel"]])]

    def _arg(self, fn: str, ref: dict, param: dict, bound: dict):
        """(buffer, shape, dtype) for one kernel argument, as the parameter's kind says the kernel reads it."""
        shape = tuple(param["shape"])
        if "lut" in ref:  # a constant table, shared by every kernel that reads it
            return (self.luts[ref["lut"]][0], (int(param["words"]),), "uint32")
        if "weight" in ref:
            buf = self.weights[ref["weight"]]
            if param["kind"] == "raw":  # storage-type bytes, read by the kernel as uint32 words
                return (buf, (int(param["words"]),), "uint32")
            return (buf, shape, "float32")  # small f32 tensors (bias, norm, positions)
        if "slot" in ref:
            buf = self.slots[ref["slot"]]
        elif "output" in ref:
            buf = self.outputs[fn][ref["output"]]
        else:
            buf = bound[ref["input"]]
        if ref.get("offset"):  # a slice the memory plan aliased: the part of the buffer it names
            key = (id(buf), ref["offset"])
            if key not in self._views or self._views[key][0] is not buf:
                n = int(np.prod(shape)) * np.dtype(param["dtype"]).itemsize
                if ref["offset"] + n > buf.nbytes:
                    raise RuntimeFailure(
                        f"{self.path}: a view past its buffer's end; the manifest is damaged, recompile"
                    )
                self._views[key] = (buf, self.ex.view(buf, ref["offset"], n))
            buf = self._views[key][1]
        return (buf, shape, param["dtype"])

    def set_loras(self, loras: list[tuple[str | Path, float]]) -> list[dict]:
        """Run the next calls with these LoRAs ((file, strength) pairs; any format, read by content) as branches
        beside the steps they adapt; an empty list removes them. Returns per LoRA what it adapted and left."""
        if not loras:
            self.loras = None
            return []
        from runtime.lora.branch import prepare

        self.loras = prepare(self.manifest, list(loras), self.manifest["target"])
        return self.loras.report

    def _check_names(self, fn: str, inputs: dict) -> None:
        want = self.functions[fn]["inputs"]
        if set(inputs) != set(want):
            raise RuntimeFailure(f"{fn}: inputs {sorted(inputs)} do not match its signature {sorted(want)}")

    def _check_input(self, fn: str, name: str, arr) -> np.ndarray:
        spec = self.functions[fn]["inputs"][name]
        want = tuple(spec["shape"])
        if isinstance(arr, DeviceTensor):
            if arr.shape != want:
                raise RuntimeFailure(f"{fn}: input {name!r} has shape {list(arr.shape)}; expected {list(want)}")
            return arr
        arr = np.asarray(arr)
        accept = spec.get("accept", [spec["dtype"]])
        if arr.dtype.name not in accept and not (spec["dtype"] == "float32" and arr.dtype.kind == "f"):
            raise RuntimeFailure(f"{fn}: input {name!r} has dtype {arr.dtype}; expected one of {accept}")
        if arr.shape != want:
            raise RuntimeFailure(f"{fn}: input {name!r} has shape {list(arr.shape)}; expected {list(want)}")
        hi = spec.get("max_value")
        if "accept" in spec and arr.size and (arr.min() < 0 or (hi is not None and arr.max() > hi)):
            raise RuntimeFailure(f"{fn}: input {name!r} holds ids outside 0..{hi} (the model's vocabulary)")
        if not np.isfinite(arr).all() if arr.dtype.kind == "f" else False:
            raise RuntimeFailure(f"{fn}: input {name!r} holds NaN or infinite values")
        return np.ascontiguousarray(arr.astype(spec["dtype"]))

    def call(self, fn: str, inputs: dict, *, download: bool = True) -> dict:
        """Run function ``fn``. Inputs are arrays or `DeviceTensor`s (outputs of an earlier call, which stay on the
        device). Returns arrays, or with ``download=False`` `DeviceTensor`s valid until ``fn`` runs again."""
        if fn not in self.functions:
            raise RuntimeFailure(f"{self.path} has no function {fn!r}; it holds {sorted(self.functions)}")
        f = self.functions[fn]
        self._check_names(fn, inputs)
        bound = {}
        for k, v in inputs.items():
            v = self._check_input(fn, k, v)
            if isinstance(v, DeviceTensor):
                bound[k] = v.buffer
            else:
                self.ex.upload(self.inputs[fn][k], v.reshape(-1))
                bound[k] = self.inputs[fn][k]
        self._need(fn)
        branches = self.loras.steps.get(fn, {}) if self.loras is not None else {}
        if not branches and hasattr(self.ex, "bind"):
            for run in self._bound_steps(fn, bound):
                run()
        else:
            for i, step in enumerate(f["steps"]):
                args = self.step_args(fn, step, bound)
                branch = branches.get(i)
                if branch is None:
                    self.ex.launch(step["kernel"], args)
                    continue
                projected = branch.before(self.ex, args)  # a LoRA branch (runtime/lora/branch.py)
                self.ex.launch(step["kernel"], args)
                branch.after(self.ex, args, projected)
        if not download:
            return {o: DeviceTensor(self.outputs[fn][o], s["shape"], s["dtype"]) for o, s in f["outputs"].items()}
        self.ex.synchronize()
        return {
            o: self.download(DeviceTensor(self.outputs[fn][o], s["shape"], s["dtype"])) for o, s in f["outputs"].items()
        }

    def _bound_steps(self, fn: str, bound: dict) -> list:
        """``fn``'s launches bound to their buffers (``Executor.bind``), kept while the same buffers serve: the
        inputs bound (uploaded, or an earlier output passed on); a change of the resident weights (offload) drops
        every function's (``_upload``, ``_need``)."""
        bufs = [bound[k] for k in sorted(bound)]
        held = self._bound.get(fn)
        # buffers compare by identity (they define no equality): the same objects, not equal contents
        if held is None or held[0] != bufs:
            runs = [self.ex.bind(s["kernel"], self.step_args(fn, s, bound)) for s in self.functions[fn]["steps"]]
            held = self._bound[fn] = (bufs, runs)
        return held[1]

    def download(self, t: DeviceTensor) -> np.ndarray:
        return self.ex.download(t.buffer, (int(np.prod(t.shape)),), t.dtype).reshape(t.shape)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the only function on arrays whose first axis is a batch of any size: split into compiled-size
        chunks (the last one padded, its extra rows dropped)."""
        fn = self._only()
        f = self.functions[fn]
        self._check_names(fn, inputs)
        arrays = {}
        for k, v in inputs.items():
            a = np.asarray(v)
            want = f["inputs"][k]["shape"]
            if a.ndim == len(want) - 1:
                a = a[None]
            if a.ndim != len(want) or list(a.shape[1:]) != list(want[1:]):
                raise RuntimeFailure(
                    f"input {k!r} has shape {a.shape}; expected [batch, {', '.join(map(str, want[1:]))}]"
                )
            arrays[k] = a
        batch = f["inputs"][next(iter(arrays))]["shape"][0]
        total = next(iter(arrays.values())).shape[0]
        outs: dict[str, list[np.ndarray]] = {o: [] for o in f["outputs"]}
        for start in range(0, total, batch):
            chunk = {}
            for k, a in arrays.items():
                part = a[start : start + batch]
                if part.shape[0] < batch:  # pad the last chunk; its extra rows are dropped below
                    part = np.concatenate([part, np.zeros((batch - part.shape[0], *part.shape[1:]), part.dtype)])
                chunk[k] = part
            res = self.call(fn, chunk)
            n = min(batch, total - start)
            for o, v in res.items():
                outs[o].append(v[:n])
        return {o: np.concatenate(v) for o, v in outs.items()}


def _nbytes(spec: dict) -> int:
    return max(4, int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize)


def load(
    path: str | Path, *, num_threads: int | None = None, verify: bool = True, trusted_keys: list | None = None
) -> Model:
    return Model(path, num_threads=num_threads, verify=verify, trusted_keys=trusted_keys)
