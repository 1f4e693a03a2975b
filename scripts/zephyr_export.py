"""Export a fine-tuned run as one merged model (safetensors, tokenizer, chat template); = zephyr-export.

    python scripts/zephyr_export.py --run_dir runs/<name>                    # bf16, into runs/<name>/merged
    python scripts/zephyr_export.py --run_dir runs/<name> --dtype fp32 --output_dir merged-fp32

The model loads with AutoModelForCausalLM.from_pretrained; vLLM and llama.cpp's convert_hf_to_gguf.py take it.
"""

from zephyr.commands import export as main

if __name__ == "__main__":
    main()
