"""Fine-tune any registered task (= zephyr-train); the study's tasks also have their own scripts.

    python scripts/zephyr_train.py --task samsum --data_dir ../shared/data
    python scripts/zephyr_train.py --config configs/table2_qlora.yaml --data_dir ../shared/data   # task from the file
    python scripts/zephyr_train.py --task newsgroups --data_dir ../shared/data --train_fraction 0.1 --do_eval True

Writes runs/<name>/ with adapter/, config.json, train_log.jsonl and train_metrics.json. --help lists all flags.
"""

from zephyr.commands import train as main

if __name__ == "__main__":
    main()
