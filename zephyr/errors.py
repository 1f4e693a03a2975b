"""The one exception type for bad user input: entry points print it as a single line and exit 2."""

import re


class UsageError(ValueError):
    """Bad input (flag, config key, data file, model path). The message names the culprit."""


def raise_usage_errors(parser, prefix: str = "", suffix: str = ""):
    """Make an argparse parser report bad arguments as one UsageError (``prefix + message + suffix``) instead of
    printing its usage text and exiting."""

    def one_line_error(message: str):
        # argparse's "argument --lora_r/--lora-r: invalid int value" names the flag as every other error does
        message = re.sub(r"^argument (--\w+)(?:/--[\w-]+)*: ", r"\1: ", message)
        raise UsageError(f"{prefix}{message}{suffix}")

    parser.error = one_line_error
    return parser
