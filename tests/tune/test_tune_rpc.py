"""Tuning over TVM's RPC tracker: a tracker and two RPC servers on the loopback address (TVM's own `tvm.exec`
programs, in subprocesses, on free ports), and `tune --rpc-tracker --rpc-key` measuring a small kernel on them, as a
workstation tunes for a device it does not have."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sdcompile.passes.context import CompileOptions
from tests.tune import CPU_KERNEL as KERNEL

KEY = "sdcompile-test-cpu"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = dict(os.environ, TVM_NUM_THREADS="1")  # two servers share this machine's cores
    with open(log, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT, env=env)


def _servers(port: int) -> int:
    from tvm import rpc

    try:
        summary = rpc.connect_tracker("127.0.0.1", port).summary()
    except Exception:  # not listening yet
        return 0
    return sum(1 for s in summary.get("server_info", []) if s["key"].split(":")[-1] == KEY)


@pytest.fixture()
def tracker(tmp_path):
    procs: list[subprocess.Popen] = []
    port = _free_port()
    try:
        procs.append(
            _start(
                ["tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 1)],
                tmp_path / "tracker.log",
            )
        )
        for i in range(2):
            p = _free_port()
            procs.append(
                _start(
                    [
                        "tvm.exec.rpc_server",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(p),
                        "--port-end",
                        str(p + 20),
                        "--tracker",
                        f"127.0.0.1:{port}",
                        "--key",
                        KEY,
                    ],
                    tmp_path / f"server{i}.log",
                )
            )
        deadline = time.monotonic() + 90
        while _servers(port) < 2:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                logs = "\n".join(f.read_text(errors="replace")[-800:] for f in sorted(tmp_path.glob("*.log")))
                pytest.fail(f"RPC tracker and servers did not come up:\n{logs}")
            time.sleep(0.5)
        yield port, tmp_path
    finally:
        for p in procs:  # each by its own pid: the servers, then the tracker
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def test_tune_across_rpc_servers(tracker, tiny_ldm_safetensors, tmp_path):
    from sdcompile.tuning import records, tune_model

    port, logs = tracker
    root = tmp_path / "records"
    log: list[str] = []
    s = tune_model(
        tiny_ldm_safetensors,
        CompileOptions(target="cpu"),
        trials=4,
        pattern=KERNEL,
        top=1,
        rpc=("127.0.0.1", port, KEY),
        root=root,
        min_speedup=0.0,
        candidates=1,
        say=log.append,
    )
    (k,) = s["kernels"]
    assert s["runner"] == "rpc" and k["status"] == "tuned", log
    # the machine is the one the servers reported (here the same CPU, named without this host's AMX probe)
    from sdcompile.codegen import tvm_layer

    assert s["machine"] == records.slug(tvm_layer.system_cpu())
    rec = records.find(root, "cpu", s["machine"], KERNEL)
    assert rec["trace"] and rec["measured"]["runner"] == "rpc" and rec["measured"]["tuned_s"] > 0
    assert rec["measured"]["error_ratio"] <= 1.0
    # the servers did the work: every module they loaded (candidates, the head-to-head) left a line in their logs
    served = [f.read_text(errors="replace") for f in sorted(logs.glob("server*.log"))]
    assert sum(text.count("load_module") for text in served) >= 2, served

    # a second run reuses the record: nothing is tuned again
    again = tune_model(
        tiny_ldm_safetensors,
        CompileOptions(target="cpu"),
        pattern=KERNEL,
        top=1,
        rpc=("127.0.0.1", port, KEY),
        root=root,
    )
    assert again["kernels"][0]["status"] == "reused"
