"""The Ray backend: each run is one Ray task that asks for 1/RUNS_PER_GPU of a GPU, and Ray places the tasks on
the cluster's nodes. Nothing here schedules, queues or retries: a task whose node dies is run again on another
node by Ray itself (``max_retries``); the run then resumes from its last checkpoint where the run directory is on
a shared filesystem, and starts over where it is not. A run that fails by itself (exit status not 0) is not
retried: it is reported once, with the last line of its log.

Results in one place: every run directory ends up under the sweep's output root on the machine that started the
sweep. A node that sees the driver's output root (a shared filesystem: the driver leaves a token file there and
the task reads it) writes the run there directly; any other node runs it in a scratch folder of its own and
returns the run directory, checkpoints left out, as a tar archive that the driver unpacks.

Requirements on the nodes: the suite, its Python environment, the data and the model at the same paths as on
the driver (configs/ray/aws-g5.yaml sets nodes up so); runs start in the driver's working directory where the
node has it. ``ZEPHYR_RAY_SHARED_FS=no`` ships every run back even where the filesystem is shared.
"""

from __future__ import annotations

import io
import logging
import os
import secrets
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

from zephyr.errors import UsageError
from zephyr.rundir import SWEEP_LOG
from zephyr.sweeps.grid import Run
from zephyr.sweeps.runner import CsvLog, Progress, run_command

RETRIES = 3  # times Ray starts a run again after its node (or worker process) died
SHARED_FS_ENV = "ZEPHYR_RAY_SHARED_FS"  # auto (default) or no
TOKEN_FILE = ".zephyr-sweep-token"  # in each output root while a sweep runs: proves a node shares the filesystem
NOT_SHIPPED = ("checkpoints",)  # a finished run's checkpoints stay on its node


def _remap(command: list[str], mapping: dict[str, str]) -> list[str]:
    """``command`` with each argument under a path of ``mapping`` moved to that path's new place."""
    moved = []
    for arg in command:
        for old, new in mapping.items():
            if arg == old or arg.startswith(old + os.sep):
                arg = new + arg[len(old):]
                break
        moved.append(arg)
    return moved


def _archive(run_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(run_dir.iterdir()):
            if child.name not in NOT_SHIPPED:
                tar.add(child, arcname=child.name)
    return buffer.getvalue()


def run_on_node(run_dir: str, command: list[str], root: str, token: str, cwd: str, cache_dir: str | None) -> dict:
    """The Ray task: one run on whichever node Ray placed it. ``root`` is the driver's output root (absolute),
    ``token`` what the driver wrote into it (empty: always ship the run back)."""
    import ray

    token_path = Path(root) / TOKEN_FILE
    shared = bool(token) and token_path.is_file() and token_path.read_text() == token
    scratch = None if shared else Path(tempfile.mkdtemp(prefix="zephyr-run-"))
    mapping = {} if shared else {root: str(scratch / "out")}
    here = Path(_remap([run_dir], mapping)[0])
    gpus = [str(g) for g in ray.get_gpu_ids()]  # Ray sets CUDA_VISIBLE_DEVICES too; the log shows which
    cache = Path(cache_dir) if shared and cache_dir else None  # elsewhere torch's own, kept on the node between runs
    try:
        code, wall = run_command(here, _remap(command, mapping), ",".join(gpus) or None, cache,
                                 cwd if Path(cwd).is_dir() else str(Path.home()))
        node = f"{ray.get_runtime_context().get_node_id()[:8]} ({ray.util.get_node_ip_address()})"
        return {"code": code, "wall": wall, "node": node, "archive": None if shared else _archive(here)}
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _unpack(archive: bytes, run_dir: Path) -> None:
    """The shipped run directory into the driver's, replacing files of the same name (the sweep.log appended)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    earlier_log = (run_dir / SWEEP_LOG).read_text(errors="replace") if (run_dir / SWEEP_LOG).is_file() else ""
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # refuses links and paths outside run_dir
            tar.extractall(run_dir, filter="data")
        else:
            tar.extractall(run_dir)
    if earlier_log and (run_dir / SWEEP_LOG).is_file():
        (run_dir / SWEEP_LOG).write_text(earlier_log + (run_dir / SWEEP_LOG).read_text(errors="replace"))


def connect():
    """ray, connected to RAY_ADDRESS (or the cluster this machine belongs to); UsageError where there is none or
    it has no GPU."""
    import ray

    address = os.environ.get("RAY_ADDRESS") or "auto"
    if not ray.is_initialized():
        try:
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as err:
            raise UsageError(f"BACKEND ray: no Ray cluster at {address} ({str(err).splitlines()[0][:200]}); start one "
                             "(ray up configs/ray/aws-g5.yaml, or ray start --head) or set RAY_ADDRESS") from None
    gpus = ray.cluster_resources().get("GPU", 0)
    if not gpus:
        raise UsageError(f"BACKEND ray: the Ray cluster at {address} has no GPU; each run asks for one")
    return ray


def execute(pending: list[Run], runs_per_gpu: int, cache_dir: Path | None, csv_log: CsvLog, progress: Progress,
            gpus: list[str]) -> None:
    """Every pending run as a Ray task; results recorded as they come back, in any order."""
    ray = connect()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("GPU")]
    progress.say(f"ray: {len(pending)} runs on {len(nodes)} GPU nodes ({ray.cluster_resources()['GPU']:g} GPUs), "
                 f"{runs_per_gpu} at a time per GPU" + (f"; GPUS={','.join(gpus)} is not used: Ray places the runs"
                                                         if gpus else ""))
    roots = {str(job.run_dir.parent.resolve()) for job in pending}
    token = "" if os.environ.get(SHARED_FS_ENV, "auto") == "no" else secrets.token_hex(16)
    for root in roots if token else ():
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / TOKEN_FILE).write_text(token)
    # Placed by GPU share alone (num_cpus=0): RUNS_PER_GPU runs share a GPU whatever the node's CPU count.
    task = ray.remote(run_on_node).options(num_gpus=1 / runs_per_gpu, num_cpus=0, max_retries=RETRIES,
                                           retry_exceptions=False)
    try:
        started = time.perf_counter()
        refs = {}
        for number, job in enumerate(pending, 1):
            root = str(job.run_dir.parent.resolve())
            command = _remap(job.command, {str(job.run_dir.parent): root})  # relative output roots made absolute
            refs[task.remote(str(job.run_dir.resolve()), command, root, token, os.getcwd(),
                             str(cache_dir.resolve()) if cache_dir else None)] = (number, job)
        while refs:
            [ref], _ = ray.wait(list(refs), num_returns=1)
            number, job = refs.pop(ref)
            _finish(ray, ref, number, job, csv_log, progress, started)
    finally:
        for root in roots if token else ():
            (Path(root) / TOKEN_FILE).unlink(missing_ok=True)


def _finish(ray, ref, number: int, job: Run, csv_log: CsvLog, progress: Progress, started: float) -> None:
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as err:  # the task itself failed, after Ray's retries
        reason = f"Ray: {type(err).__name__}: {str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}"
        wall = round(time.perf_counter() - started, 1)
        progress.end(number, job, wall, csv_log.record(job, -1, wall, reason))
        return
    if result["archive"] is not None:
        _unpack(result["archive"], job.run_dir)
    failure = csv_log.record(job, result["code"], result["wall"])
    progress.end(number, job, result["wall"], failure, f" on node {result['node']}")

