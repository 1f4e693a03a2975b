"""--help: flags grouped by concern with the common ones first, each once with its default, and the scripts'
docstrings printed as written (command lines continued with a backslash keep it)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from conftest import REPO
from zephyr.cli import baseline, finetune, inference, quickstart
from zephyr.helptext import FLAG_GROUPS

COMMANDS = {"finetune": lambda argv: finetune("newsgroups", argv), "inference": lambda argv: inference(None, argv),
            "baseline": baseline, "quickstart": quickstart}


def _help(call, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        call(["--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def _sections(text: str) -> dict[str, list[str]]:
    """Section title -> the flag entries under it (first word of each)."""
    sections, title = {}, None
    for line in text.splitlines():
        if re.match(r"^[A-Za-z][\w ]*:$", line):
            title = line[:-1]
            sections[title] = []
        elif title and line.startswith("  -"):
            sections[title].append(line.split()[0].rstrip(","))
    return sections


@pytest.mark.parametrize("name", COMMANDS)
def test_help_groups_flags_by_concern_with_the_common_ones_first(name, capsys):
    sections = _sections(_help(COMMANDS[name], capsys))
    titles = list(sections)
    assert titles[:2] == ["options", "common flags"] and sections["options"] == ["-h"]
    assert titles[2:] == [t for t in FLAG_GROUPS if t in titles[2:]], "groups in FLAG_GROUPS order"
    flags = [flag for entries in sections.values() for flag in entries]
    assert len(flags) == len(set(flags)), "each flag once"
    assert not [f for f in flags if f.startswith("--no")], "no --no_X twins"
    assert not [f for f in flags if "-" in f[2:]], "one spelling per flag"
    if name in ("finetune", "quickstart"):
        assert sections["common flags"][:4] == ["--config", "--model_name_or_path", "--data_dir", "--task"]
        assert "--max_steps" in sections["common flags"] and "--lora_alpha" in sections["LoRA"]
        assert "--compile_layers" in sections["speed and memory"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_flag_in_help_states_its_default(name, capsys):
    text = _help(COMMANDS[name], capsys)
    entries = re.split(r"\n(?=  -)", text.split("common flags:")[1].strip("\n"))
    for entry in entries:
        entry = re.split(r"\n\n", entry)[0]
        assert re.search(r"default:|\(required\)", " ".join(entry.split()), re.IGNORECASE), entry
    assert "(default: None)" not in text
    if name == "quickstart":  # the defaults the command runs with, not the dataclass's
        assert re.search(r"--learning_rate X\s+Peak learning rate of the LoRA weights\s+\(default: 0\.002\)", text)


def test_the_hidden_no_twins_still_parse():
    from zephyr.cli import parse_finetune

    *_, eval_args = parse_finetune("newsgroups", ["--no_merge_adapter"])
    assert eval_args.merge_adapter is False


def _docstring_continuations(path):
    """The lines of a script's docstring that end in a backslash, as the source spells them, and the docstring."""
    source = path.read_text()
    node = ast.parse(source).body[0]
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
        return [], None
    lines = source.splitlines()[node.lineno - 1:node.end_lineno]
    return [line.strip() for line in lines if line.endswith(" \\")], node.value.value


@pytest.mark.parametrize("path", sorted((REPO / "scripts").rglob("*.py")), ids=lambda p: p.name)
def test_script_docstrings_keep_their_backslash_continuations(path):
    continued, docstring = _docstring_continuations(path)
    for line in continued:
        assert line in docstring, f"{path.name}: the docstring lost the line break of {line!r}"


def test_help_prints_the_scripts_continued_command_lines():
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "zephyr_classification.py"), "--help"],
                            capture_output=True, text=True, timeout=120, cwd=REPO,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert "--packing True \\\n        --per_device_train_batch_size 4" in result.stdout
