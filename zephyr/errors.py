"""The one exception type for bad user input: entry points print it as a single line and exit 2."""


class UsageError(ValueError):
    """Bad input (flag, config key, data file, model path). The message names the culprit."""
