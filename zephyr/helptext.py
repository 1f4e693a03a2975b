"""--help of the suite's scripts: flags grouped by concern, the common ones first, each once, each with its default.

HfArgumentParser (transformers) puts every field of a dataclass in one list and adds a ``--no_X`` twin to every
boolean field that defaults to True, with the positive flag's help text; ``--X False`` says the same, so the twins
still parse but are not listed.
"""

from __future__ import annotations

import argparse
import re

# Concern -> flags, in the order --help lists them. A flag a script does not take is skipped.
FLAG_GROUPS = {
    "common flags": ("config", "model_name_or_path", "data_dir", "task", "run_dir", "train_fraction", "lora_r",
                     "lora_targets", "lora_lm_head", "neftune_alpha", "num_train_epochs", "max_steps", "packing",
                     "num_shots", "do_eval", "max_test_rows", "eval_method", "train_memory_gib", "eval_memory_gib",
                     "output_root", "run_name", "overwrite", "log_level"),
    "data": ("train_file", "test_file", "data_seed", "prompt_format", "max_length"),
    "model": ("quantization", "dtype", "attn_implementation", "model_cache_dir", "base_model"),
    "LoRA": ("lora_alpha", "lora_dropout"),
    "training": ("learning_rate", "lr_scheduler_type", "warmup_ratio", "per_device_train_batch_size",
                 "gradient_accumulation_steps", "max_grad_norm", "optim", "loss", "seed", "logging_steps",
                 "save_steps", "report_to"),
    "evaluation": ("eval_output_dir", "max_new_tokens", "max_prompt_tokens", "eval_dtype"),
    "speed and memory": ("gradient_checkpointing", "compile_layers", "fused_nf4", "sync_free_metrics", "cuda_graphs",
                         "flat_cuda_graphs", "flat_split_tokens", "flat_row_multiple", "matmul_library",
                         "packed_rows", "batch_layout", "pad_to_max_length", "eval_batch_size", "eval_batch_tokens",
                         "merge_adapter"),
}
STATES_DEFAULT = re.compile(r"\bdefault:", re.IGNORECASE)
METAVARS = {int: "N", float: "X"}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written; each flag once (``--lora_r N``, not also ``--lora-r``), with its real
    default unless its help text states it (``default: ...``)."""

    def __init__(self, prog, **kwargs):
        super().__init__(prog, max_help_position=36, **kwargs)

    def _get_help_string(self, action):
        text = action.help or ""
        if action.required:
            return text if "required" in text else f"{text} (required)"
        if STATES_DEFAULT.search(text) or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        return f"{text} (default: {'none' if action.default is None else action.default})"

    def _format_action_invocation(self, action):
        if not action.option_strings:
            return super()._format_action_invocation(action)
        if action.nargs == 0:
            return ", ".join(action.option_strings)
        return f"{action.option_strings[0]} {self._format_args(action, self._get_default_metavar_for_optional(action))}"

    def _get_default_metavar_for_optional(self, action):
        if action.nargs == "?":  # HfArgumentParser's booleans: --flag, --flag True, --flag False
            return "True|False"
        return METAVARS.get(action.type, "VALUE")


def arrange(parser: argparse.ArgumentParser) -> None:
    """Hide the ``--no_X`` twins and move every flag into its group of FLAG_GROUPS, in that order; the usage line
    names the groups instead of listing ~60 flags. A parser with flags of its own (benchmark, export) keeps one
    list."""
    for action in parser._actions:
        if action.option_strings and action.option_strings[0].startswith("--no_"):
            action.help = argparse.SUPPRESS
    by_dest = {a.dest: a for a in parser._actions if a.help is not argparse.SUPPRESS and a.option_strings}
    placed = [name for names in FLAG_GROUPS.values() for name in names if name in by_dest]
    if set(by_dest) - set(placed) - {"help"}:
        return
    for group in parser._action_groups:
        group._group_actions[:] = [a for a in group._group_actions if a.dest not in placed]
    for title, names in FLAG_GROUPS.items():
        group = parser.add_argument_group(title)
        group._group_actions.extend(by_dest[name] for name in names if name in by_dest)
    parser.usage = "%(prog)s [--config FILE] [--FLAG VALUE ...]   (common flags first; then by concern)"
