"""QLoRA fine-tuning and evaluation of Zephyr-7B-beta (or any causal LM) on 20 Newsgroups and SAMSum."""

__version__ = "0.1.0"
