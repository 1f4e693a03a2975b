r"""QLoRA fine-tuning of Zephyr-7B-beta on 20 Newsgroups (the study's settings are the defaults, bar packing).

    # 4-bit NF4, LoRA r=8 on q_proj,v_proj, 5 epochs, lr 2e-4, 8 examples per optimizer step
    python scripts/zephyr_classification.py --data_dir ../shared/data
    # the study's exact protocol: examples packed into 512-token rows, 4 rows x 2 accumulation steps
    python scripts/zephyr_classification.py --data_dir ../shared/data --packing True \
        --per_device_train_batch_size 4 --gradient_accumulation_steps 2
    # 10 % of the rows, all seven projections, NEFTune, then evaluate on the test split
    python scripts/zephyr_classification.py --data_dir ../shared/data --train_fraction 0.1 \
        --lora_targets all --neftune_alpha 5 --do_eval True
    # settings from a file, with CLI overrides
    python scripts/zephyr_classification.py --config my.yaml --num_train_epochs 2

Writes runs/<name>/ with adapter/, config.json, train_log.jsonl and train_metrics.json. --help lists all flags.
"""

from zephyr.cli import entry_point, finetune


@entry_point
def main(argv=None):
    return finetune("newsgroups", argv)


if __name__ == "__main__":
    main()
