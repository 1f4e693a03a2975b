"""Sweeps on a real Ray cluster of several nodes on this machine (ray.cluster_utils.Cluster), every address on the
loopback interface: the same run directories, metrics and sweep.csv rows as the local backend, results shipped
back to the driver, and a node killed mid-sweep costing no run."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # every Ray address on 127.0.0.1, never the host's own
NODE = {"num_cpus": 1, "object_store_memory": 80 * 2**20}  # small: a tiny model's runs ship a few MB
TIMINGS = ("wall_s", "tokens_per_s", "examples_per_s", "peak_gpu_memory_gib")  # CSV columns that vary run to run


@pytest.fixture
def cluster(monkeypatch):
    """A factory of loopback clusters: a head node (with ``head_gpus`` GPUs) and ``workers`` GPU nodes of one
    GPU each; shut down after the test."""
    for name, value in LOOPBACK.items():  # read by ray when imported: for the nodes and drivers started here
        monkeypatch.setenv(name, value)
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # where this process imported ray before

    made = []

    def make(head_gpus: int, workers: int):
        cluster = Cluster(initialize_head=True, head_node_args={**NODE, "num_gpus": head_gpus})
        made.append(cluster)
        nodes = [cluster.add_node(**NODE, num_gpus=1) for _ in range(workers)]
        assert cluster.address.startswith("127.0.0.1:")
        return cluster, nodes

    yield make
    for cluster in made:
        cluster.shutdown()


def csv_rows(path: Path) -> dict[str, dict]:
    rows = {row["run"]: row for row in csv.DictReader(path.open())}
    return {run: {k: v for k, v in row.items() if k not in TIMINGS} for run, row in rows.items()}


def run_files(out: Path) -> dict[str, set[str]]:
    return {run.name: {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}
            for run in out.iterdir() if run.is_dir() and run.name != "compile_cache"}


def test_a_sweep_on_two_nodes_makes_what_the_local_backend_makes(tiny_sweep, cluster):
    """The runs go to two nodes that (as this test tells them) share no filesystem with the driver: each run
    directory comes back as an archive, and the output root then holds what the local sweep made."""
    ray_cluster, _ = cluster(head_gpus=1, workers=1)
    out = tiny_sweep["root"] / "ray"
    env = {**tiny_sweep["env"], **LOOPBACK, "OUT_ROOT": str(out), "RAY_ADDRESS": ray_cluster.address,
           "ZEPHYR_RAY_SHARED_FS": "no", "RUNS_PER_GPU": "1"}  # a whole GPU each: one run on each node
    result = subprocess.run(["bash", str(REPO / "sample_ablate.sh")], env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "ray: 2 runs on 2 GPU nodes (2 GPUs), 1 at a time per GPU"
    done = [l for l in lines if l.startswith("[")]
    pattern = r"\[\d/2\] newsgroups_tiny-mistral_frac1\.0_\w+ done in \w+ on node (\w{8}) \(127\.0\.0\.1\)(, ETA \w+)?"
    assert len(done) == 2 and all(re.fullmatch(pattern, l) for l in done), lines
    assert len({re.fullmatch(pattern, l)[1] for l in done}) == 2, "one run on each node"
    assert lines[-1] == "sweep: 2 ran, 0 skipped, 0 failed"
    local = tiny_sweep["out"]
    assert run_files(out) == run_files(local) and "adapter/adapter_model.safetensors" in run_files(out)[
        "newsgroups_tiny-mistral_frac1.0_base"]
    assert csv_rows(out / "sweep.csv") == csv_rows(local / "sweep.csv")
    for run in run_files(local):
        assert (out / run / "predictions.jsonl").read_text() == (local / run / "predictions.jsonl").read_text()
        ours, theirs = (json.loads((root / run / "metrics.json").read_text()) for root in (out, local))
        assert {k: ours[k] for k in ("accuracy", "macro_f1", "n_examples")} == \
            {k: theirs[k] for k in ("accuracy", "macro_f1", "n_examples")}
    assert not list(out.glob(".zephyr-sweep-token")), "the driver's token is removed"
    from zephyr.results import collect

    assert [r["accuracy"] for r in collect([out])] == [r["accuracy"] for r in collect([local])]  # make_tables' input


JOB = '''
import json, os, sys, time
run_dir = sys.argv[1]
events = os.path.join(os.path.dirname(run_dir), "events.log")
with open(events, "a") as log:
    log.write(f"start {os.path.basename(run_dir)} {os.getpid()}\\n")
time.sleep(float(sys.argv[2]))
if sys.argv[3] == "fail":
    sys.exit("Traceback: this job always fails")
os.makedirs(run_dir, exist_ok=True)
json.dump({"rouge1": 1.0}, open(os.path.join(run_dir, "metrics.json"), "w"))
with open(events, "a") as log:
    log.write(f"end {os.path.basename(run_dir)} {os.getpid()}\\n")
'''


def test_a_node_killed_mid_sweep_costs_no_run(tmp_path, cluster):
    """Three nodes: a head without GPU (the driver's, as in configs/ray/aws-g5.yaml) and two GPU workers. One
    worker is killed while it runs a job: Ray runs that job again on the other worker, the sweep finishes every
    job, and the killed attempt never finished (its process died with its node). A job that fails by itself is
    not retried: reported once, and the sweep exits 1."""
    ray_cluster, workers = cluster(head_gpus=0, workers=2)
    (tmp_path / "job.py").write_text(JOB)
    runs = tmp_path / "runs"
    jobs = tmp_path / "jobs.tsv"
    commands = [[sys.executable, str(tmp_path / "job.py"), str(runs / f"job{i}"), "3", "fail" if i == 4 else "ok"]
                for i in range(5)]
    jobs.write_text("".join(f"{runs / f'job{i}'}\t{shlex.join(command)}\n" for i, command in enumerate(commands)))
    sweep = subprocess.Popen([sys.executable, "-m", "zephyr.sweep", "--jobs", str(jobs), "--csv", str(runs / "sweep.csv"),
                              "--backend", "ray"], env={**os.environ, "RAY_ADDRESS": ray_cluster.address},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    events = runs / "events.log"
    deadline = time.time() + 120
    while not events.is_file() or len(events.read_text().splitlines()) < 2:  # both workers busy
        assert time.time() < deadline and sweep.poll() is None
        time.sleep(0.1)
    ray_cluster.remove_node(workers[1], allow_graceful=False)
    output, _ = sweep.communicate(timeout=300)
    assert sweep.returncode == 1, output  # the job that always fails, after all others finished
    assert output.count(f"FAILED {runs / 'job4'} (exit code 1, log {runs / 'job4' / 'sweep.log'}): Traceback: this "
                        "job always fails") == 1
    assert "sweep: 4 ran, 0 skipped, 1 failed" in output
    log = [line.split() for line in events.read_text().splitlines()]
    starts = [name for kind, name, _ in log if kind == "start"]
    assert sorted(set(starts)) == [f"job{i}" for i in range(5)] and len(starts) == 6, log  # one started twice
    [again] = [name for name in set(starts) if starts.count(name) == 2]
    first_pid = next(pid for kind, name, pid in log if kind == "start" and name == again)
    assert ["end", again, first_pid] not in log, "the killed node's attempt went on running"
    assert sorted(r["status"] for r in csv.DictReader((runs / "sweep.csv").open())) == ["failed"] + ["ok"] * 4


def test_the_aws_cluster_config_is_valid_for_the_installed_ray():
    """configs/ray/aws-g5.yaml against ray's cluster-launcher schema, as given and with ray's AWS defaults filled
    in (what `ray up` checks before it starts anything)."""
    import copy

    import jsonschema
    import ray.autoscaler
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "configs" / "ray" / "aws-g5.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["InstanceType"] == "g5.2xlarge" and workers["max_workers"] == 24
    head = config["available_node_types"][config["head_node_type"]]["node_config"]["InstanceType"]
    assert not head.startswith(("g", "p")), "the head is a CPU node: no run is placed there"
    assert any("requirements.txt -e ~/zephyr-qlora-suite" in c for c in config["setup_commands"])
