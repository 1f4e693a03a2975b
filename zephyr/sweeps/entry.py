"""The shell sweeps' one entry point: ``python -m zephyr.sweeps ablation|lora_grid|baseline --script PATH [FLAG...]``.

sample_ablate.sh, run_lora.sh and baseline_inference.sh call it with their own path (whose header comment is
their ``--help``) and their arguments. Every variable a sweep knows can be set in the environment or as a flag of
the same name (``--out_root x``, ``--gpus=0,1``, ``--dry_run``); an empty environment variable means its default,
as in the shell. The grid is expanded by zephyr/sweeps/grid.py and run by zephyr/sweeps/runner.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from zephyr.errors import UsageError
from zephyr.sweeps.grid import COMMON_DEFAULTS, SWEEP_DEFAULTS, expand
from zephyr.sweeps.runner import COMPILE_CACHE, parse_gpus, positive_count, run_sweep

COMMON_VARS = ("MODEL", "DATA_DIR", "OUT_ROOT", "GPUS", "RUNS_PER_GPU", "DRY_RUN", "PYTHON", "MAX_TEST_ROWS",
               "EXTRA_ARGS", "BACKEND")
COMMON_HELP = "sweep_common.sh"  # in scripts/: the variables every sweep shares, under "# Variables of every sweep"


class HelpRequested(Exception):
    pass


def known_variables(sweep: str) -> tuple[str, ...]:
    return COMMON_VARS + tuple(SWEEP_DEFAULTS[sweep])


def read_variables(sweep: str, argv: list[str], environ: dict) -> dict:
    """The sweep's variables: environment (non-empty values), then flags; raises HelpRequested for -h/--help."""
    known = known_variables(sweep)
    values = {name: environ[name] for name in known if environ.get(name)}
    if "DATA_DIR" not in values and environ.get("ZEPHYR_DATA_DIR"):
        values["DATA_DIR"] = environ["ZEPHYR_DATA_DIR"]

    def set_variable(flag: str, value: str) -> None:
        name = flag.upper().replace("-", "_")
        if name not in known:
            raise UsageError(f"unknown flag --{flag} (known: {' '.join(n.lower() for n in known)})")
        values[name] = value

    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            raise HelpRequested
        if arg in ("--dry_run", "--dry-run"):
            values["DRY_RUN"] = "1"
        elif arg.startswith("--") and "=" in arg:
            set_variable(*arg[2:].split("=", 1))
        elif arg.startswith("--"):
            if not args:
                raise UsageError(f"flag {arg} needs a value")
            set_variable(arg[2:], args.pop(0))
        else:
            raise UsageError(f"unexpected argument '{arg}' (flags look like --name value)")
    return {**COMMON_DEFAULTS, **SWEEP_DEFAULTS[sweep], **values}


def _comment_block(path: Path, first: int = 1, starting: str | None = None) -> list[str]:
    """The comment lines of ``path`` from line ``first`` (or from the line that starts with ``starting``) up to
    the first line that is not a comment, without their ``# ``."""
    lines = path.read_text().splitlines()
    if starting is not None:
        first = next(i for i, line in enumerate(lines) if line.startswith(starting))
    block = []
    for line in lines[first:]:
        if not line.startswith("#"):
            break
        block.append(line[2:] if line.startswith("# ") else line[1:])
    return block


def usage(script: Path) -> str:
    """The calling script's header comment, then the variables every sweep shares."""
    common = _comment_block(script.parent / "scripts" / COMMON_HELP, starting="# Variables of every sweep")
    return "\n".join(_comment_block(script) + [""] + common) + "\n"


def main(argv: list[str] | None = None, environ: dict | None = None, out=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    environ = dict(os.environ if environ is None else environ)
    if len(argv) < 3 or argv[0] not in SWEEP_DEFAULTS or argv[1] != "--script":
        print(f"usage: python -m zephyr.sweeps {'|'.join(SWEEP_DEFAULTS)} --script PATH [FLAG...]", file=sys.stderr)
        return 2
    sweep, script = argv[0], Path(argv[2]).resolve()
    try:
        values = read_variables(sweep, argv[3:], environ)
        if values["DRY_RUN"] not in ("0", "1"):
            raise UsageError(f"DRY_RUN: must be 0 or 1, got '{values['DRY_RUN']}'")
        runs = expand(sweep, values, script.parent / "scripts")
        gpus = parse_gpus(values["GPUS"], "GPUS")
        runs_per_gpu = positive_count(values["RUNS_PER_GPU"], "RUNS_PER_GPU")
        out_root = Path(values["OUT_ROOT"])
        return run_sweep(runs, gpus, out_root / "sweep.csv", values["DRY_RUN"] == "1", out, runs_per_gpu,
                         out_root / COMPILE_CACHE, values["BACKEND"] or None)
    except HelpRequested:
        print(usage(script), end="", file=out or sys.stdout)
        return 0
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
