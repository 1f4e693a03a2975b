"""CLI flags and an optional YAML/JSON config file, parsed into the argument dataclasses (zephyr/config.py).

A config file is turned into ``--key value`` flags placed before the real CLI flags, so both go through the
same typed argparse conversion (``lora_r: abc`` fails like ``--lora_r abc``) and CLI flags override the file.
Unknown keys in the file and unknown flags are errors; ``--flag False`` is False.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import yaml

from zephyr.errors import UsageError, raise_usage_errors
from zephyr.helptext import HelpFormatter, arrange
from zephyr.io import not_utf8


def config_value(path: str, key: str):
    """One key of a ``--config`` file (None if absent), read with the same checks as the whole file."""
    data = _read_config(path)
    return data.get(key)


def _config_to_flags(path: str, allowed: set[str]) -> list[str]:
    data = _read_config(path)
    flags = []
    for key, value in data.items():
        if key not in allowed:
            raise UsageError(f"{path}: unknown key {key!r}{_near(key, allowed, '')}")
        if value is not None:
            flags += [f"--{key}", str(value)]
    return flags


def _read_config(path: str) -> dict:
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"--config: {path}: file not found")
    try:
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle) if file.suffix == ".json" else yaml.safe_load(handle)
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        raise UsageError(f"{path}: cannot parse config ({str(err).splitlines()[0]})") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"{path}: {not_utf8(err)}") from None
    except OSError as err:
        raise UsageError(f"{path}: cannot read config ({err.strerror})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise UsageError(f"{path}: config must be a mapping of argument names to values")
    return data


def _remove_flags(parser, names: set[str]) -> None:
    """Take flags a script does not use out of its parser: absent from --help, an error when given.

    Their dataclass defaults stay as parser defaults: HfArgumentParser expects every field in the namespace.
    """
    unused = [a for a in parser._actions if a.dest in names]
    defaults = {}
    for action in unused:
        defaults.setdefault(action.dest, action.default)  # the field's own action comes before its --no_ twin
    parser.set_defaults(**defaults)
    for action in unused:
        parser._remove_action(action)
        for option in action.option_strings:
            parser._option_string_actions.pop(option, None)
        for group in parser._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)


def parse_args(dataclass_types: tuple, argv: list[str] | None = None, defaults: dict | None = None,
               description: str | None = None, unused: frozenset[str] = frozenset()):
    """Parse CLI flags (and ``--config FILE``) into instances of ``dataclass_types``.

    ``unused`` names fields the calling script ignores: they keep their defaults and are not flags.
    """
    from transformers import HfArgumentParser

    from zephyr.progress import add_log_level_flag

    argv = list(sys.argv[1:] if argv is None else argv)
    config_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config_parser.add_argument("--config", default=None)
    known, argv = config_parser.parse_known_args(argv)
    # No prefix abbreviations: a typo such as --learning_rat must be an error, not --learning_rate.
    description = description or getattr(sys.modules.get("__main__"), "__doc__", None)
    parser = HfArgumentParser(dataclass_types, description=description, allow_abbrev=False,
                              formatter_class=HelpFormatter)
    _remove_flags(parser, set(unused))
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML or JSON file of flag values; flags given on the command line win (default: none)")
    add_log_level_flag(parser)
    arrange(parser)
    raise_usage_errors(parser, suffix=f" (values from {known.config} included)" if known.config else "")
    known_fields = {f.name for cls in dataclass_types for f in fields(cls)}
    allowed = known_fields - set(unused)
    if defaults:
        parser.set_defaults(**{k: v for k, v in defaults.items() if k in known_fields})
    if known.config:
        argv = _config_to_flags(known.config, allowed) + argv
    *instances, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        flag = next((r for r in remaining if r.startswith("--")), "")
        raise UsageError(f"unknown argument(s): {' '.join(remaining)}{_near(flag[2:].split('=')[0], allowed, '--')}")
    return tuple(obj for obj in instances if type(obj) in dataclass_types)


# Names other tools use for the suite's flags, suggested when given.
OTHER_NAMES = {"lr": "learning_rate", "batch_size": "per_device_train_batch_size", "model": "model_name_or_path",
               "output_dir": "output_root", "rank": "lora_r", "alpha": "lora_alpha", "dropout": "lora_dropout"}


def _near(name: str, allowed: set[str], prefix: str) -> str:
    """'' or ' (did you mean --lora_r?)': the closest known name, for a typo, another tool's name (--lr) or a
    word of exactly one flag (--epochs)."""
    import difflib

    name = name.replace("-", "_")
    close = difflib.get_close_matches(name, sorted(allowed), n=1, cutoff=0.6) if name else []
    containing = [known for known in sorted(allowed) if name and name in known.split("_")]
    other = OTHER_NAMES.get(name) if OTHER_NAMES.get(name) in allowed else None
    guess = other or (close[0] if close else containing[0] if len(containing) == 1 else None)
    return f" (did you mean {prefix}{guess}?)" if guess else ""
