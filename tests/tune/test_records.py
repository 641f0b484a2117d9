"""The parts of tuning that need no tuning run: which kernels are hot, the numerical check that guards every record,
and which records a compile picks up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sdcompile.kernels import spec as S
from sdcompile.passes.context import CompileOptions


@pytest.fixture(scope="module")
def clip_kernels(tiny_ldm_safetensors):
    from sdcompile.tuning import model_kernels

    return model_kernels(tiny_ldm_safetensors, CompileOptions(target="cpu"))


def test_hot_kernels_first(clip_kernels):
    from sdcompile.tuning import rank_kernels, select

    specs, plans = clip_kernels
    rows = rank_kernels(specs, plans)
    ops = [r["op"] for r in rows]
    # FLOP-counted kernels (linear, attention) before the memory-bound ones, each group by its work per run
    counted = [r for r in rows if r["flops"] is not None]
    assert {r["op"] for r in counted} == {"linear", "attention"} and ops[: len(counted)] == [r["op"] for r in counted]
    assert [r["flops"] for r in counted] == sorted((r["flops"] for r in counted), reverse=True)
    steps = sum(len(p["steps"]) for p in plans.values())
    assert sum(r["launches"] for r in rows) == steps
    assert [r["op"] for r in select(rows, "attention", 5)] == ["attention"]
    assert len(select(rows, None, 2)) == 2
    assert all(r["op"] == "layer_norm" for r in select(rows, "layer_norm", 9))
    # --per-op: the hottest kernel of each op, in the ranking's order
    per_op = select(rows, None, 1, per_op=True)
    assert [r["op"] for r in per_op] == list(dict.fromkeys(ops))
    assert all(r is next(x for x in rows if x["op"] == r["op"]) for r in per_op)
    two = select(rows, None, 2, per_op=True)
    assert all(sum(r["op"] == op for r in two) == min(2, ops.count(op)) for op in set(ops))
    from sdcompile.errors import OptionError

    with pytest.raises(OptionError, match="matches no kernel"):
        select(rows, "conv2d", 3)


def test_compare_catches_a_wrong_output():
    from sdcompile.tuning.tuner import compare

    spec = S.linear(4, 8, 16, "f32", bias=True)
    rng = np.random.default_rng(0)
    built = [rng.standard_normal((4, 8)).astype(np.float32)]
    ok, ratio = compare(spec, [built[0].copy()], built, None, None)
    assert ok and ratio == 0.0
    # one f32 rounding apart: equal (a different summation order)
    near = [np.nextafter(built[0], np.float32(np.inf))]
    assert compare(spec, near, built, None, None)[0]
    wrong = built[0].copy()
    wrong[2, 3] += 0.01
    ok, ratio = compare(spec, [wrong], built, None, None)
    assert not ok and ratio > 1
    missing = built[0].copy()
    missing[0, 0] = np.nan  # an element the tuned kernel never wrote
    assert compare(spec, [missing], built, None, None) == (False, float("inf"))


def test_compare_against_reference():
    from sdcompile.kernels import check
    from sdcompile.tuning.tuner import compare

    spec = S.linear(4, 8, 32, "q8_0")
    xs, ref, tol = check.case(spec)
    good = [ref.astype(np.float32)]
    assert compare(spec, good, good, ref, tol)[0]
    bad = [(ref + 3 * tol).astype(np.float32)]
    assert not compare(spec, bad, good, ref, tol)[0]


def _write(root, target, machine, spec, **extra):
    import schedules
    from sdcompile.codegen import tvm_layer
    from sdcompile.tuning import records

    rec = {
        "format": records.FORMAT,
        "version": records.VERSION,
        "spec": spec.name,
        "kind": records.schedule_kind(target),
        "workload": tvm_layer.workload_digest(spec),
        "builtin_rule": schedules.builtin_rule_name(spec, records.schedule_kind(target)),
        "trace": [[], []],
        "measured": {"builtin_s": 2e-5, "tuned_s": 1e-5, "speedup": 2.0},
    } | extra
    records.write(records.record_path(root, target, machine, spec.name), rec)


def test_applicable_records(tmp_path):
    from sdcompile.codegen import tvm_layer
    from sdcompile.tuning import records

    a, b, c = S.linear(4, 8, 16, "f32"), S.linear(4, 8, 32, "f32"), S.linear(4, 16, 16, "f32")
    d, e = S.linear(4, 16, 32, "f32"), S.linear(4, 32, 16, "f32")
    assert records.applicable([a, b], "cpu", tmp_path) == (None, {}, [])  # no records: nothing probed
    here = records.cpu_machine(tvm_layer.cpu_target())
    _write(tmp_path, "cpu", here, a)
    _write(tmp_path, "cpu", here, b, workload="0" * 64)  # tuned on another compute of the kernel
    _write(tmp_path, "cpu", "another-cpu", c)  # tuned for another machine
    _write(tmp_path, "vulkan", here, c)  # another target
    (records.record_path(tmp_path, "cpu", here, c.name, declined=True)).write_text(json.dumps({"format": "x"}))
    # measured against a built-in rule that no longer takes the kernel (a faster one came since), or not saying which
    _write(tmp_path, "cpu", here, d, builtin_rule="schedules.cpu.linear_of_an_older_version")
    _write(tmp_path, "cpu", here, e, builtin_rule=None)
    machine, found, stale = records.applicable([a, b, c, d, e], "cpu", tmp_path)
    assert machine == here and list(found) == [a.name] and stale == sorted([b.name, d.name, e.name])
    rep = records.report("cpu", machine, found, stale)
    assert rep["kernels"][a.name] == {
        "record": f"cpu/{here}/{a.name}.json",
        "builtin_s": 2e-5,
        "tuned_s": 1e-5,
        "speedup": 2.0,
    }
    assert records.report("cpu", machine, {}, []) is None


def test_records_apply_only_inside_their_scope(tmp_path):
    """Kernel checks and tests of the built-in rules build outside `tuning_records`: a record never reaches them."""
    from sdcompile.codegen import tvm_layer

    spec = S.linear(4, 16, 16, "f32")
    builtin = tvm_layer.scheduled_module([spec], "cpu")[spec.name].script()
    bogus = {spec.name: {"kind": "cpu", "trace": [[["GetSBlock", [], ["nothing", "main"], ["b0"]]], []]}}
    assert tvm_layer.records_key() == ""
    with tvm_layer.tuning_records(bogus):
        assert tvm_layer.records_key() != ""
        with pytest.raises(Exception, match="nothing"):  # the trace is replayed, and names a block that is not there
            tvm_layer.scheduled_module([spec], "cpu")
        # a CPU record is not a GPU schedule
        assert "threadIdx" in tvm_layer.scheduled_module([spec], "gpu")[spec.name].script()
    assert tvm_layer.records_key() == ""
    assert tvm_layer.scheduled_module([spec], "cpu")[spec.name].script() == builtin


def test_gpu_rules_make_launchable_cuda_kernels():
    """The GPU side without a GPU: MetaSchedule's CUDA rule set (with the WebGPU-sized limits the GPU schedules
    keep) generates schedules whose traces replay on the kernel and lower to CUDA C with constant launch geometry,
    as a CUDA compile would replay a record."""
    from sdcompile.codegen import tvm_layer
    from sdcompile.tuning import tuner

    spec = S.linear(77, 128, 128, "f32", bias=True, act="gelu")
    target = tvm_layer.gpu_target("cuda", "sm_80") | {"max_threads_per_block": tvm_layer.GPU_MAX_THREADS}
    device = tuner.Device("cuda", target, "test-gpu", "test GPU")
    ctx = tuner._tune_context(tuner._without_lets(tvm_layer.tuning_workload(spec)), device, 1, spec.name)
    spaces = ctx.generate_design_space()
    assert spaces
    params = {spec.name: [p.name for p in spec.params]}
    for sch in spaces:
        func = tvm_layer.replay_trace(spec, tvm_layer.trace_to_json(sch.trace))
        source, launch = tvm_layer.lower_gpu_module(tvm_layer.tvm.IRModule({spec.name: func}), "cuda", params)
        (entry,) = launch[spec.name]
        assert sorted(entry["buffers"]) == ["bias", "w", "x", "y"] and "__global__" in source
        assert entry["block"][0] * entry["block"][1] <= tvm_layer.GPU_MAX_THREADS


def test_cli_refusals(tiny_ldm_safetensors, capsys):
    from sdcompile.cli import main

    model = str(tiny_ldm_safetensors)
    assert main(["tune", model, "--rpc-tracker", "127.0.0.1:9190"]) == 2
    assert "--rpc-tracker and --rpc-key go together" in capsys.readouterr().err
    assert main(["tune", model, "--rpc-tracker", "nohost", "--rpc-key", "k"]) == 2
    assert "is not HOST:PORT" in capsys.readouterr().err
    assert main(["tune", model, "--kernels", "conv2d"]) == 2
    assert "matches no kernel of this model" in capsys.readouterr().err
    assert main(["tune", model, "--trials", "0"]) == 2
    assert "--trials must be at least 1" in capsys.readouterr().err
