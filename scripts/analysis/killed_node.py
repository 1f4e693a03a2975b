"""A tiny sweep on a 3-node Ray cluster on this machine, one GPU node killed mid-sweep; writes killed_node.log.

    PYTHONPATH=$PWD python scripts/analysis/killed_node.py [--out results/ray/killed_node.log]

The cluster (ray.cluster_utils.Cluster, every address on 127.0.0.1): a head without GPU, from which the sweep is
started, as in configs/ray/aws-g5.yaml, and two worker nodes that declare one GPU each (this machine has none;
Ray only counts them). The sweep: sample_ablate.sh with the embedded tiny model and synthetic data, fractions
0.5 and 1.0 x {base, NEFTune} (4 runs), 8 optimizer steps each (a checkpoint every step). Once a run has written
its second checkpoint, the second worker node is killed (raylet and workers, SIGKILL). The log holds the sweep's
own output, then each run's attempts (the ``$ command`` lines of its sweep.log and where it resumed), sweep.csv
and the files of every run directory.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EXTRA_ARGS = ("--max_steps 8 --max_length 96 --per_device_train_batch_size 4 --optim adamw_torch "
              "--gradient_checkpointing False --eval_batch_size 8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "results" / "ray" / "killed_node.log"))
    args = parser.parse_args()
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # read when ray is imported: loopback addresses only
    from ray.cluster_utils import Cluster

    from zephyr.embedded import build_tiny_model, write_synthetic_data

    scratch = Path(tempfile.mkdtemp(prefix="ray-killed-node-"))
    model = build_tiny_model(scratch / "tiny-mistral", seed=0)
    data = write_synthetic_data(scratch / "data", seed=0, train_rows=48, test_rows=8)
    out = scratch / "sweep"
    log = [f"# {' '.join([Path(sys.executable).name, *sys.argv])}  ({time.strftime('%Y-%m-%d %H:%M:%S')})"]
    started = time.perf_counter()

    def note(line: str) -> None:
        log.append(f"[driver script +{time.perf_counter() - started:5.1f}s] {line}")
        print(log[-1], flush=True)

    node = {"num_cpus": 1, "object_store_memory": 80 * 2**20}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "num_gpus": 0})
    workers = [cluster.add_node(**node, num_gpus=1) for _ in range(2)]
    note(f"cluster up at {cluster.address}: head (0 GPUs), workers {[w.node_id[:8] for w in workers]} (1 GPU each)")
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "PYTHON": sys.executable, "MODEL": str(model),
           "DATA_DIR": str(data), "OUT_ROOT": str(out), "FRACTIONS": "0.5 1.0", "VARIANTS": "base neftune",
           "MAX_TEST_ROWS": "4", "EXTRA_ARGS": EXTRA_ARGS}
    command = ["bash", str(REPO / "sample_ablate.sh")]
    log.append(f"# sweep: RAY_ADDRESS={cluster.address} MODEL=<tiny> DATA_DIR=<synthetic> OUT_ROOT=<scratch> "
               f"FRACTIONS='0.5 1.0' VARIANTS='base neftune' MAX_TEST_ROWS=4 EXTRA_ARGS='{EXTRA_ARGS}' "
               "bash sample_ablate.sh")
    sweep = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not list(out.glob("*/checkpoints/checkpoint-2")):
        if sweep.poll() is not None:
            break
        time.sleep(0.2)
    cluster.remove_node(workers[1], allow_graceful=False)
    note(f"killed worker node {workers[1].node_id[:8]} (a run had written checkpoint-2)")
    output, _ = sweep.communicate(timeout=1200)
    note(f"sweep exited with status {sweep.returncode}")
    output = re.sub(r"\x1b\[[0-9;]*m", "", output)  # Ray colours its own lines
    log += ["", "## the sweep's output", *output.splitlines(), "", "## each run's attempts (its sweep.log)"]
    for run in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "compile_cache"):
        lines = (run / "sweep.log").read_text(errors="replace").splitlines()
        attempts = sum(line.startswith("$ ") for line in lines)
        resumed = [line.split("resuming from ")[1] for line in lines if "resuming from " in line]
        log.append(f"{run.name}: {attempts} attempt(s)" + (f", resumed from {', '.join(resumed)}" if resumed else ""))
    log += ["", "## sweep.csv", *(out / "sweep.csv").read_text().splitlines(), "", "## run directories"]
    for run in sorted(p for p in out.iterdir() if p.is_dir() and p.name != "compile_cache"):
        log.append(f"{run.name}/: {' '.join(sorted(str(p.relative_to(run)) for p in run.iterdir()))}")
    cluster.shutdown()
    Path(args.out).write_text("\n".join(log) + "\n")
    return sweep.returncode


if __name__ == "__main__":
    sys.exit(main())
