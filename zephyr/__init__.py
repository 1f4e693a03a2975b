"""QLoRA fine-tuning and evaluation of Zephyr-7B-beta (or any causal LM) on 20 Newsgroups and SAMSum."""

import logging

__version__ = "0.1.0"


class _WithoutKernelsAdvice(logging.Filter):
    """bitsandbytes 0.50 advises ``pip install kernels`` on every import on CPUs with AVX512-BF16. That package
    downloads kernels from the hub at run time, which this suite never needs (its own bitsandbytes build runs
    the CPU path), so the advice only hides real output; every other bitsandbytes message still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pip install kernels" not in record.getMessage()


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_WithoutKernelsAdvice())
