"""Sweeps: DRY_RUN, skip/resume, one run per GPU, failures, kills, and table generation. No GPU needed."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO
from zephyr.embedded import write_synthetic_data
from zephyr.results import collect, write_tables
from zephyr.sweep import Job, assign_gpus, run_sweep

FAKE_JOB = '''
import json, os, sys, time
run_dir, sleep, code = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
with open(os.path.join(os.path.dirname(run_dir), "events.log"), "a") as log:
    log.write(f"start {os.path.basename(run_dir)} {os.environ.get('CUDA_VISIBLE_DEVICES')} {time.time()}\\n")
print("working on", run_dir)
time.sleep(sleep)
if code:
    print("Traceback: something broke", file=sys.stderr)
    with open(os.path.join(os.path.dirname(run_dir), "events.log"), "a") as log:  # the GPU is free again
        log.write(f"end {os.path.basename(run_dir)} {os.environ.get('CUDA_VISIBLE_DEVICES')} {time.time()}\\n")
    sys.exit(code)
os.makedirs(run_dir, exist_ok=True)
json.dump({"kind": "finetune", "arguments": {"DataArguments": {"task": "samsum", "train_fraction": 0.1},
           "ModelArguments": {"model_name_or_path": "m", "lora_targets": "attention"},
           "TrainArguments": {"num_train_epochs": 1}}}, open(os.path.join(run_dir, "config.json"), "w"))
json.dump({"rouge1": 40.0, "rouge2": 15.0}, open(os.path.join(run_dir, "metrics.json"), "w"))
with open(os.path.join(os.path.dirname(run_dir), "events.log"), "a") as log:
    log.write(f"end {os.path.basename(run_dir)} {os.environ.get('CUDA_VISIBLE_DEVICES')} {time.time()}\\n")
'''


def fake_jobs(tmp_path: Path, n: int, sleep: float = 0.3, fail: set[int] = frozenset()) -> list[Job]:
    script = tmp_path / "fake_job.py"
    script.write_text(FAKE_JOB)
    root = tmp_path / "runs"
    root.mkdir(exist_ok=True)
    return [Job(root / f"job{i}", [sys.executable, str(script), str(root / f"job{i}"), str(sleep),
                                   "1" if i in fail else "0"]) for i in range(n)]


def events(tmp_path: Path) -> list[tuple[str, str, str, float]]:
    path = tmp_path / "runs" / "events.log"
    return [tuple(line.split()[:3]) + (float(line.split()[3]),) for line in path.read_text().splitlines()]


def sweep_script(name: str, env: dict, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / name), *flags], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable, **env}, timeout=120)


def test_dry_run_prints_the_ablation_grid(tmp_path, tiny_model_dir):
    # Every job is checked before anything starts, so the model and the data must be real.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(tiny_model_dir)
    data = write_synthetic_data(tmp_path / "data", seed=0, train_rows=160, test_rows=8)
    out = tmp_path / "out"
    result = sweep_script("sample_ablate.sh", {"DRY_RUN": "1", "OUT_ROOT": str(out), "DATA_DIR": str(data),
                                               "GPUS": "0,1", "MODEL": str(tmp_path / "models" / "tiny")})
    lines = result.stdout.splitlines()
    assert result.returncode == 0 and len(lines) == 24, result.stderr
    assert all(line.startswith(f"CUDA_VISIBLE_DEVICES={i % 2} ") for i, line in enumerate(lines))
    assert "--run_name newsgroups_tiny_frac0.025_base --train_fraction 0.025 --do_eval True" in lines[0]
    assert "--train_fraction 1.0 --lora_targets all --lora_lm_head True --neftune_alpha 5 --do_eval True" in lines[-1]
    assert all(f"--data_dir {data}" in line and f"--model_name_or_path {tmp_path}/models/tiny" in line
               for line in lines)
    assert not out.exists(), "a dry run writes nothing"


def test_dry_run_of_the_lora_grid_and_baselines(tmp_path):
    lora = sweep_script("run_lora.sh", {"OUT_ROOT": str(tmp_path)}, "--dry_run", "--ranks", "4 8", "--epochs_list", "2")
    lines = lora.stdout.splitlines()
    assert len(lines) == 2 * 3 * 2  # ranks x dropouts x NEFTune
    assert "--num_train_epochs 2 --lora_r 8 --lora_dropout 0.5 --neftune_alpha 5" in lines[-1]
    base = sweep_script("baseline_inference.sh", {"OUT_ROOT": str(tmp_path), "DRY_RUN": "1"})
    assert [l.split("--num_shots ")[1].split()[0] for l in base.stdout.splitlines()] == ["0", "3", "0", "3"]
    bad = sweep_script("run_lora.sh", {}, "--rank", "4")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown flag --rank")


def test_study_tables_command_trains_table1_fast_fractions_on_the_fast_path(tmp_path, tiny_model_dir):
    data = write_synthetic_data(tmp_path / "data", seed=0, train_rows=160, test_rows=8)
    # the fast path only where asked; every other fraction of the study's six trains eagerly
    env = {"DRY_RUN": "1", "GGUF": str(tiny_model_dir), "DATA": str(data), "OUT_ROOT": str(tmp_path / "out"),
           "TABLE1_FAST_FRACTIONS": "1", "GPUS": "3"}
    result = sweep_script("results/smollm2/run_study_tables.sh", env)
    commands = [line for line in result.stdout.splitlines() if line.startswith("CUDA_VISIBLE_DEVICES=")]
    assert result.returncode == 0, result.stderr
    assert all(line.startswith("CUDA_VISIBLE_DEVICES=3 ") for line in commands)

    def sweep(folder):  # fine-tunes name their --output_root, baselines their --eval_output_dir inside it
        return [line for line in commands if re.search(rf"{tmp_path}/out/{folder}[ /]", line)]

    fast, eager = sweep("table1-fast"), sweep("table1")
    assert len(fast) == 4 and len(eager) == 5 * 4 and len(sweep("table2")) == 4 and len(sweep("baselines")) == 2
    assert all("--train_fraction 1 " in line and "--pad_to_max_length True --compile_layers true" in line
               for line in fast)
    assert {re.search(r"--train_fraction (\S+) ", line)[1] for line in eager} == {"0.5", "0.25", "0.1", "0.05", "0.025"}
    assert all("--pad_to_max_length" not in line for line in eager)
    assert all("--num_train_epochs 5 " in line for line in fast + eager)
    assert not (tmp_path / "out").exists(), "a dry run writes nothing"
    both = sweep_script("results/smollm2/run_study_tables.sh", {**env, "TABLE1_FRACTIONS": "0.25 1.0"})
    assert both.returncode == 2 and both.stderr == "error: TABLE1_FRACTIONS: 1.0 is also in TABLE1_FAST_FRACTIONS\n"


def finished_as_planned(run) -> None:
    """A finished run directory of ``run``'s very settings: its config.json records what its command resolves to."""
    from zephyr.sweeps.identity import planned

    run.run_dir.mkdir(parents=True)
    (run.run_dir / "config.json").write_text(json.dumps({"kind": "finetune", "arguments": planned(run.command)[0]}))
    (run.run_dir / "metrics.json").write_text("{}")


def test_complete_runs_are_skipped_and_a_finished_run_of_other_settings_stops_the_sweep(tmp_path, capsys):
    from zephyr.sweeps.grid import expand

    runs = {run.name: run for run in expand("ablation", {"OUT_ROOT": str(tmp_path), "MODEL": "tiny"}, REPO / "scripts")}
    for name in ("newsgroups_tiny_frac0.025_base", "newsgroups_tiny_frac0.5_all"):
        finished_as_planned(runs[name])
    (tmp_path / "newsgroups_tiny_frac0.05_base").mkdir()  # started, not complete: runs again
    result = sweep_script("sample_ablate.sh", {"DRY_RUN": "1", "OUT_ROOT": str(tmp_path), "MODEL": "tiny"})
    skipped = [l for l in result.stdout.splitlines() if l.startswith("skip (complete)")]
    commands = [l for l in result.stdout.splitlines() if not l.startswith("skip")]
    assert len(skipped) == 2 and len(commands) == 22
    assert any("frac0.05_base " in c for c in commands)
    from zephyr.sweeps.entry import main  # the script's entry point, in this process

    capsys.readouterr()
    environ = {"DRY_RUN": "1", "OUT_ROOT": str(tmp_path), "MODEL": "tiny"}
    other = main(["ablation", "--script", str(REPO / "sample_ablate.sh")],
                 {**environ, "EXTRA_ARGS": "--lora_r 4 --eval_batch_size 8"})
    out, err = capsys.readouterr()
    assert other == 2 and out == ""
    assert err == (f"error: {tmp_path}/newsgroups_tiny_frac0.025_base: finished with other settings (--lora_r 8, "
                   "now 4); give these settings their own OUT_ROOT, or add --overwrite True to EXTRA_ARGS to replace "
                   "it\n")
    replacing = main(["ablation", "--script", str(REPO / "sample_ablate.sh")],
                     {**environ, "EXTRA_ARGS": "--lora_r 4 --overwrite True"})
    assert replacing == 0 and len(capsys.readouterr().out.splitlines()) == 24


def test_gpu_assignment_round_robin():
    jobs = [Job(Path(f"r{i}"), ["true"]) for i in range(5)]
    assert [gpu for _, gpu in assign_gpus(jobs, ["2", "3"])] == ["2", "3", "2", "3", "2"]
    assert [gpu for _, gpu in assign_gpus(jobs, [])] == [None] * 5


def test_runs_share_out_gpus_one_at_a_time_and_failures_are_recorded(tmp_path, capsys):
    jobs = fake_jobs(tmp_path, 5, sleep=0.4, fail={3})
    code = run_sweep(jobs, ["0", "1"], tmp_path / "runs" / "sweep.csv")
    output = capsys.readouterr().out
    assert code == 1
    assert "sweep: 4 ran, 0 skipped, 1 failed" in output
    assert f"FAILED {jobs[3].run_dir} (exit code 1" in output and "Traceback: something broke" in output
    # the progress line of the failed run says why, as it happens
    assert any(line.startswith("[") and " FAILED in " in line and line.endswith(": Traceback: something broke")
               for line in output.splitlines())
    log = (jobs[3].run_dir / "sweep.log").read_text()
    assert log.startswith("$ CUDA_VISIBLE_DEVICES=") and "working on" in log
    seen = events(tmp_path)
    for gpu in ("0", "1"):
        spans = sorted((t, kind) for kind, _, g, t in seen if g == gpu)
        kinds = [kind for _, kind in spans]
        assert kinds and all(a != b or a == "end" for a, b in zip(kinds, kinds[1:])), f"two runs on GPU {gpu}"
    assert {g for _, _, g, _ in seen} == {"0", "1"}
    rows = list(csv.DictReader((tmp_path / "runs" / "sweep.csv").open()))
    assert sorted(r["status"] for r in rows) == ["failed", "ok", "ok", "ok", "ok"]
    assert {r["rouge1"] for r in rows if r["status"] == "ok"} == {"40.0"}


def test_a_job_that_writes_only_metrics_gets_its_csv_row(tmp_path, capsys):
    """Re-evaluations (the quality benchmark's 4-bit and log-likelihood passes) write metrics.json without a
    config.json of their own; the sweep records them instead of dying in its worker thread."""
    out = tmp_path / "run" / "eval-4bit"
    code = run_sweep([Job(out, [sys.executable, "-c", f"import json, pathlib; p = pathlib.Path({str(out)!r}); "
                                "(p / 'metrics.json').write_text(json.dumps({'rouge1': 1.0}))"])],
                     ["0"], tmp_path / "sweep.csv", runs_per_gpu=2)
    assert code == 0 and "sweep: 1 ran, 0 skipped, 0 failed" in capsys.readouterr().out
    [row] = list(csv.DictReader((tmp_path / "sweep.csv").open()))
    assert (row["status"], row["run"]) == ("ok", "eval-4bit")


def test_killed_sweep_restarts_with_only_the_missing_runs(tmp_path):
    jobs = fake_jobs(tmp_path, 3, sleep=1.5)
    job_file = tmp_path / "jobs.tsv"
    import shlex

    job_file.write_text("".join(f"{j.run_dir}\t{shlex.join(j.command)}\n" for j in jobs))
    argv = [sys.executable, "-m", "zephyr.sweep", "--jobs", str(job_file), "--csv", str(tmp_path / "s.csv")]
    process = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (jobs[0].run_dir / "metrics.json").is_file():
        assert time.time() < deadline and process.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)  # the second job has started
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    time.sleep(2)  # long enough for an orphaned second job to have finished, had it survived
    assert not (jobs[1].run_dir / "metrics.json").exists(), "the killed sweep's child kept running"
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "sweep: 2 ran, 1 skipped, 0 failed" in result.stdout
    starts = [name for kind, name, _, _ in events(tmp_path) if kind == "start"]
    assert starts.count("job0") == 1 and starts.count("job2") == 1
    assert all((j.run_dir / "metrics.json").is_file() for j in jobs)


def _fake_run(root: Path, name: str, kind: str, task: str, metrics: dict, **args):
    run = root / name
    run.mkdir(parents=True)
    data = {"task": task, "train_fraction": args.get("fraction", 1.0)}
    model = {"model_name_or_path": args.get("model", "HuggingFaceH4/zephyr-7b-beta"),
             "lora_targets": "all" if args.get("all_modules") else "attention",
             "lora_lm_head": bool(args.get("all_modules")), "lora_r": 8}
    train = {"neftune_alpha": 5.0 if args.get("neftune") else None, "num_train_epochs": 2}
    config = {"kind": kind, "arguments": {"DataArguments": data, "ModelArguments": model},
              "data": {"train_rows_used": args.get("rows")}}
    if kind == "finetune":
        config["arguments"]["TrainArguments"] = train
    else:
        config["arguments"]["EvalArguments"] = {"num_shots": args.get("shots", 0)}
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").write_text(json.dumps(metrics))


def test_tables_from_fake_runs_show_missing_cells_as_missing(tmp_path, caplog):
    root = tmp_path / "runs"
    _fake_run(root / "a-check", "n1", "finetune", "newsgroups", {"accuracy": 49.0}, fraction=0.1, rows=1101)
    _fake_run(root, "n1", "finetune", "newsgroups", {"accuracy": 50.0}, fraction=0.1, rows=1101)
    _fake_run(root, "n2", "finetune", "newsgroups", {"accuracy": 55.5}, fraction=0.1, rows=1101, neftune=True)
    _fake_run(root, "n3", "finetune", "newsgroups", {"accuracy": 0.0}, fraction=1.0, rows=11014, all_modules=True)
    _fake_run(root, "s0", "baseline", "samsum", {"rouge1": 30.0, "rouge2": 9.0}, shots=0)
    _fake_run(root, "s1", "finetune", "samsum", {"rouge1": 45.0, "rouge2": 20.0})
    written = write_tables(collect([root]), tmp_path / "out", protocol="fake runs")
    table1 = list(csv.DictReader(written["table1_newsgroups_accuracy"].open()))
    # Every study fraction is listed; fractions without runs are missing, not zero.
    assert [r["train_fraction"] for r in table1] == ["0.025", "0.05", "0.1", "0.25", "0.5", "1"]
    assert [r["train_rows"] for r in table1] == ["", "", "1101", "", "", "11014"]
    assert (table1[2]["base"], table1[2]["NEFTune"], table1[2]["all-module"]) == ("50.0", "55.5", "")
    assert table1[5]["all-module"] == "0.0"  # a real zero stays a zero
    assert f"2 runs fill one cell ({root}/a-check/n1, {root}/n1); the table shows the last" in caplog.text
    assert table1[0]["base"] == ""
    markdown = written["markdown"].read_text()
    assert "| 0.1 | 1101 | 50.00 | 55.50 | — | — |" in markdown and "| 1 | 11014 | — | — | 0.00 | — |" in markdown
    assert "| zephyr-7b-beta | few-shot | — | — |" in markdown and "| zephyr-7b-beta | zero-shot | 30.00 | 9.00 |" in markdown
    assert written["accuracy_plot"].stat().st_size > 1000 and written["rouge_plot"].stat().st_size > 1000


def test_table_script_names_a_corrupt_metrics_file(tmp_path):
    _fake_run(tmp_path / "runs", "bad", "finetune", "samsum", {})
    (tmp_path / "runs" / "bad" / "metrics.json").write_text('{"rouge1": 4')
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), "--runs",
                             str(tmp_path / "runs"), "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and not (tmp_path / "out").exists()
    assert result.stderr.strip() == f"error: {tmp_path}/runs/bad/metrics.json: not valid JSON (Expecting ',' " \
                                    "delimiter at line 1)"


def test_a_run_directory_holding_only_the_sweep_log_is_accepted(tmp_path):
    """The sweep opens <run>/sweep.log before the run starts; training must not take it for a foreign folder."""
    from zephyr.errors import UsageError
    from zephyr.rundir import SWEEP_LOG, prepare_run_dir

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / SWEEP_LOG).write_text("$ python train.py\n")
    assert prepare_run_dir(run_dir, {"A": {"x": 1}}, overwrite=False) is None
    assert (run_dir / SWEEP_LOG).read_text() == "$ python train.py\n"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not a run directory of this suite"):
        prepare_run_dir(tmp_path / "other", {"A": {"x": 1}}, overwrite=False)


@pytest.mark.parametrize("python, message", [
    ("/nonexistent/python", "error: PYTHON: /nonexistent/python: not found (the interpreter that runs the suite)"),
    ("false", "error: PYTHON: false cannot import the suite (run pip install -e . with that interpreter)")])
def test_a_sweep_checks_its_interpreter_before_anything(tmp_path, python, message):
    result = subprocess.run(["bash", str(REPO / "sample_ablate.sh"), "--dry_run"], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "PYTHON": python, "OUT_ROOT": str(tmp_path / "out")})
    assert result.returncode == 2 and result.stderr == message + "\n" and result.stdout == ""
    assert list(tmp_path.iterdir()) == []
