r"""QLoRA fine-tuning of Zephyr-7B-beta on SAMSum (the study's settings are the defaults, bar packing).

    # 4-bit NF4, LoRA r=64 on q_proj,v_proj, 1 epoch, lr 2e-4, 8 examples per optimizer step
    python scripts/zephyr_summarization.py --data_dir ../shared/data
    # the study's exact protocol: examples packed into 512-token rows, 4 rows x 2 accumulation steps
    python scripts/zephyr_summarization.py --data_dir ../shared/data --packing True \
        --per_device_train_batch_size 4 --gradient_accumulation_steps 2
    # full module tuning (+ lm_head) with NEFTune, evaluated on the first 200 test dialogues
    python scripts/zephyr_summarization.py --data_dir ../shared/data --lora_targets all --lora_lm_head True \
        --neftune_alpha 5 --do_eval True --max_test_rows 200

Writes runs/<name>/ with adapter/, config.json, train_log.jsonl and train_metrics.json. --help lists all flags.
"""

from zephyr.cli import entry_point, finetune


@entry_point
def main(argv=None):
    return finetune("samsum", argv)


if __name__ == "__main__":
    main()
