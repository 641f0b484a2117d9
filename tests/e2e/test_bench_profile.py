"""`sdcompile bench --profile`: every launch of a function timed on its own, summed per kernel and op, with the
arithmetic of the matmul-like kernels (GFLOP/s) checked against the shapes the artifact holds."""

from __future__ import annotations

import json

from tests.e2e.test_cli import cli_artifact, sdc  # noqa: F401  (the module-scoped artifact fixture)


def test_profile_sums_every_launch(cli_artifact):  # noqa: F811
    from runtime.model import read_manifest

    m = read_manifest(cli_artifact)
    (fn,) = m["functions"]
    steps = m["functions"][fn]["steps"]
    r = sdc("bench", cli_artifact, "--profile", "--repeat", "2", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert sum(k["calls"] for k in res["kernels"]) == len(steps)  # every launch, once per run
    assert {k["kernel"] for k in res["kernels"]} == {s["kernel"] for s in steps}
    assert abs(sum(o["seconds"] for o in res["by_op"]) - res["total_s"]) < 1e-9
    kernels = m["kernels"].get("kernels", m["kernels"])
    flops = 0.0
    for s in steps:  # 2 M N K per linear, 4 B H S T Dh per attention, from the manifest's own attributes
        a = kernels[s["kernel"]]["attrs"]
        if kernels[s["kernel"]]["op"] == "linear":
            flops += 2 * a["M"] * a["N"] * a["K"]
        elif kernels[s["kernel"]]["op"] == "attention":
            flops += 4 * a["B"] * a["H"] * a["S"] * a["T"] * a["Dh"]
    assert flops > 0 and abs(res["flops"] - flops) < 1e-6 * flops
    lin = next(o for o in res["by_op"] if o["op"] == "linear")
    assert lin["gflops"] > 0 and next(o for o in res["by_op"] if o["op"] == "layer_norm")["gflops"] is None
    text = sdc("bench", cli_artifact, "--profile", "--repeat", "1")
    assert text.returncode == 0 and "GFLOP/s" in text.stdout and "slowest kernels" in text.stdout
