"""One dataclass per concern: the flags of every entry point, with their defaults, help and checks.

Flags that need no data or model are checked here, when they are parsed (zephyr/parsing.py parses them), by the
checks of zephyr/config_checks.py.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from zephyr.config_checks import auto_true_false, check, check_finite, check_seed, check_trackers
from zephyr.errors import UsageError

# --matmul_library's values (zephyr/speed/blas.py applies them)
MATMUL_LIBRARIES = ("default", "cublas", "cublaslt")

DATA_DIR_ENV = "ZEPHYR_DATA_DIR"
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
TARGET_PRESETS = {
    # The study's default adapters: query and value projections only.
    "attention": ["q_proj", "v_proj"],
    # "Full module tuning" (add --lora_lm_head True for the study's lm_head too).
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}


@dataclass
class DataArguments:
    task: str = field(default="newsgroups", metadata={"help": "A registered task (zephyr/tasks/): newsgroups or samsum"})
    data_dir: Optional[str] = field(
        default=None,
        metadata={"help": f"Local data root holding <task>/train.* and <task>/test.* (default: env {DATA_DIR_ENV}, "
                  "else the hub dataset)"})
    train_file: Optional[str] = field(
        default=None, metadata={"help": "Training file, instead of --data_dir's (default: none)"})
    test_file: Optional[str] = field(
        default=None, metadata={"help": "Test file, instead of --data_dir's (default: none)"})
    train_fraction: float = field(
        default=1.0, metadata={"help": "Stratified, nested fraction of training rows in (0, 1]; 1.0 = all rows"})
    data_seed: int = field(default=42, metadata={"help": "Seed of the training-fraction selection and few-shot picks"})
    max_test_rows: Optional[int] = field(default=None, metadata={"help": "Score only the first N test rows (default: all)"})
    prompt_format: str = field(default="original", metadata={"help": "original (### Sentence:... ### Class:) or chat"})
    max_length: int = field(
        default=512, metadata={"help": "Training sequence length; inputs are shortened so the answer always fits"})

    def __post_init__(self):
        from zephyr.tasks import TASKS

        check(self.task in TASKS, "task", f"unknown task {self.task!r} (choose from {', '.join(TASKS)})")
        if self.data_dir is None and os.environ.get(DATA_DIR_ENV):
            self.data_dir = os.environ[DATA_DIR_ENV]
            if not Path(self.data_dir).is_dir():
                raise UsageError(f"{DATA_DIR_ENV}: {self.data_dir}: directory not found")
        check_seed(self.data_seed, "data_seed")
        check(not math.isnan(self.train_fraction) and 0 < self.train_fraction <= 1, "train_fraction",
              f"must be in (0, 1], got {self.train_fraction}")
        check(self.max_test_rows is None or self.max_test_rows > 0, "max_test_rows",
              f"must be positive, got {self.max_test_rows}")
        check(self.prompt_format in ("original", "chat"), "prompt_format",
              f"unknown format {self.prompt_format!r} (choose original or chat)")
        check(self.max_length >= 16, "max_length", f"must be at least 16, got {self.max_length}")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="HuggingFaceH4/zephyr-7b-beta", metadata={"help": "Hub id, local checkpoint directory or .gguf file"})
    quantization: str = field(default="4bit", metadata={"help": "4bit (NF4, double quant, bf16 compute) or none"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha"})
    lora_dropout: float = field(default=0.1, metadata={"help": "LoRA dropout"})
    lora_targets: str = field(
        default="attention",
        metadata={"help": "attention (q_proj,v_proj), all (q,k,v,o,gate,up,down) or a comma-separated module list"})
    lora_lm_head: bool = field(default=False, metadata={"help": "Also adapt lm_head (the study's full tuning)"})
    dtype: str = field(default="auto", metadata={"help": "auto (bf16 where the GPU has it, else fp32), bf16, fp16 "
                                                         "or fp32: weights and 4-bit compute dtype"})
    attn_implementation: str = field(default="sdpa", metadata={"help": "sdpa, eager or flash_attention_2"})
    model_cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Where GGUF files are converted to checkpoints (default: env "
                                        "ZEPHYR_CACHE, else ~/.cache/zephyr-suite)"})

    def __post_init__(self):
        check(self.quantization in ("4bit", "none"), "quantization",
              f"unknown value {self.quantization!r} (choose 4bit or none)")
        check(self.dtype in ("auto", "bf16", "fp16", "fp32"), "dtype",
              f"unknown value {self.dtype!r} (choose auto, bf16, fp16 or fp32)")
        check(self.lora_r > 0, "lora_r", f"must be positive, got {self.lora_r}")
        check(self.lora_alpha > 0, "lora_alpha", f"must be positive, got {self.lora_alpha}")
        check(0 <= self.lora_dropout < 1, "lora_dropout", f"must be in [0, 1), got {self.lora_dropout}")
        check(self.attn_implementation in ATTENTION_IMPLEMENTATIONS, "attn_implementation",
              f"unknown value {self.attn_implementation!r} (choose {', '.join(ATTENTION_IMPLEMENTATIONS)})")
        self.target_modules()  # validates the preset

    def target_modules(self) -> list[str]:
        if self.lora_targets in TARGET_PRESETS:
            modules = list(TARGET_PRESETS[self.lora_targets])
        else:
            modules = [m.strip() for m in self.lora_targets.split(",") if m.strip()]
            check(bool(modules) and all(m.replace("_", "").replace(".", "").isalnum() for m in modules),
                  "lora_targets", f"unknown preset {self.lora_targets!r} "
                  f"(choose {', '.join(TARGET_PRESETS)} or a comma-separated module list)")
        if self.lora_lm_head and "lm_head" not in modules:
            modules.append("lm_head")
        return modules


@dataclass
class TrainArguments:
    output_root: str = field(default="runs", metadata={"help": "Run directories are created under this folder"})
    run_name: Optional[str] = field(default=None, metadata={"help": "Run directory name (default: from the settings)"})
    num_train_epochs: float = field(default=5.0,
                                    metadata={"help": "Epochs (the study ran 5 on Newsgroups, 1 on SAMSum)"})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps (-1: use epochs)"})
    learning_rate: float = field(default=2e-4, metadata={"help": "Peak learning rate of the LoRA weights"})
    lr_scheduler_type: str = field(default="constant_with_warmup",
                                   metadata={"help": "Any transformers scheduler name, e.g. cosine or linear"})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps used for warmup"})
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Examples (or, with --packing True, packed rows) per micro-batch; 8 x 1 is the "
                                     "study's 8 per optimizer step in one pass (the study ran 4 x 2)"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step"})
    max_grad_norm: float = field(default=0.3, metadata={"help": "Gradient clipping norm"})
    optim: str = field(default="adamw_torch_fused", metadata={"help": "Any transformers optimizer name, e.g. "
                                                                        "paged_adamw_32bit (the study's)"})
    gradient_checkpointing: str = field(
        default="auto", metadata={"help": "auto: checkpoint only as many decoder layers as needed to keep the training "
                                          "peak under --train_memory_gib (sized by a short probe on the GPU; off on "
                                          "the CPU); true: every layer (the study's); false: none; a number N: "
                                          "exactly N layers, spread over the stack"})
    train_memory_gib: float = field(
        default=20.0, metadata={"help": "GPU memory budget that --gradient_checkpointing auto plans for (20 leaves "
                                        "headroom on a 24 GB A10G)"})
    compile_layers: str = field(
        default="auto", metadata={"help": "auto: torch.compile each decoder layer on a GPU for runs of at least 1,500 "
                                          "optimizer steps, when batches are flat or keep one shape (packed rows, "
                                          "--pad_to_max_length); true: always; false: eager layers"})
    fused_nf4: bool = field(
        default=True, metadata={"help": "In compiled layers, de-quantize NF4 weights with plain tensor operations "
                                        "fused into the graph (bit for bit bitsandbytes' values); False: "
                                        "bitsandbytes' own 4-bit matmul"})
    sync_free_metrics: bool = field(
        default=True, metadata={"help": "Sum TRL's loss metrics (entropy, token accuracy) on the GPU and read them "
                                        "at logging steps; False: TRL's own loss, which waits for the GPU at every "
                                        "step"})
    cuda_graphs: bool = field(
        default=True, metadata={"help": "Replay the compiled layers as CUDA graphs when no layer is checkpointed (one "
                                        "process, batches of one shape): a small model's step is bound by the CPU "
                                        "launching kernels"})
    flat_cuda_graphs: bool = field(
        default=False, metadata={"help": "Flat batches, with --cuda_graphs: pad each row to a multiple of 256 tokens "
                                         "with padding that carries no loss, in as many segments as make a row "
                                         "hold a micro-batch's examples and one more, so that compiled layers are "
                                         "replayed as CUDA graphs, one per length; a step longer than the longest "
                                         "row that fits without checkpointing runs as consecutive rows of whole "
                                         "examples whose gradients add up to the step's"})
    flat_split_tokens: int = field(
        default=0, metadata={"help": "With --flat_cuda_graphs: run each step whose row would be longer than this "
                                     "many tokens as consecutive rows of whole examples (0: split only when the "
                                     "largest step needs checkpointing, at the longest row that fits "
                                     "--train_memory_gib without it)"})
    flat_row_multiple: int = field(
        default=0, metadata={"help": "Flat batches in compiled layers on a GPU: pad each row to a multiple of this "
                                     "many tokens (e.g. 64) with one more example that carries no loss, so that the "
                                     "matrix products see a few dozen shapes (0: each row its own length; not shown "
                                     "to be faster at 7B on an H100: results/benchmark/flat/)"})
    matmul_library: str = field(
        default="default", metadata={"help": "Library for the CUDA matrix products while training: default "
                                             "(PyTorch's choice: cuBLAS on NVIDIA GPUs), cublas or cublaslt (in 7B "
                                             "training on an H100: the same GPU time as cuBLAS; results agree to bf16 "
                                             "precision)"})
    neftune_alpha: Optional[float] = field(
        default=None, metadata={"help": "NEFTune noise alpha (the study used 5; default: off)"})
    loss: str = field(default="completion", metadata={"help": "completion (answer tokens + EOS) or full (whole text)"})
    packing: bool = field(default=False, metadata={"help": "False: batches of whole examples (8 per optimizer "
                                                           "step by default); True: the study's protocol, examples "
                                                           "packed into max_length rows, each keeping its own "
                                                           "positions and attending only to itself (2.6x fewer "
                                                           "optimizer steps per epoch on SAMSum)"})
    packed_rows: bool = field(
        default=True, metadata={"help": "Keep packed rows as rows, each example masked to itself (SDPA, eager); False: "
                                        "TRL's padding-free concatenation (always used with flash_attention_2)"})
    batch_layout: Optional[str] = field(
        default=None, metadata={"help": "How a micro-batch of whole examples is laid out (--packing False). flat: end "
                                        "to end in one row, each example keeping its positions and attending only "
                                        "to itself, no padding (the padded batch's function, tested equal); padded: "
                                        "each example padded to the batch's longest (default: flat, padded with "
                                        "--pad_to_max_length)"})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every batch of whole examples to --max_length (padding is masked and "
                                         "carries no loss): one batch shape, which --compile_layers auto compiles "
                                         "on a GPU for runs of 1,500 steps or more, and --cuda_graphs replays. "
                                         "Only with --packing False"})
    seed: int = field(default=42, metadata={"help": "Seed of the LoRA initialisation, dropout and data order"})
    logging_steps: int = field(default=10, metadata={"help": "Optimizer steps between rows of train_log.jsonl"})
    save_steps: Optional[int] = field(
        default=None, metadata={"help": "Checkpoint every N optimizer steps, so a killed run resumes when rerun (0: no "
                                        "checkpoints; default: every 200 steps or a tenth of the run, if shorter)"})
    report_to: str = field(
        default="none", metadata={"help": "Experiment trackers, comma-separated: none, tensorboard, wandb, mlflow, "
                                          "trackio (or any the Trainer knows); their files go inside the run directory"})
    do_eval: bool = field(default=False, metadata={"help": "Evaluate on the test split right after training"})
    overwrite: bool = field(default=False, metadata={"help": "Replace a finished run directory of the same name"})

    def __post_init__(self):
        from transformers.trainer_utils import SchedulerType
        from transformers.training_args import OptimizerNames

        check_finite(self.num_train_epochs, "num_train_epochs", 0, "must be positive")
        check(self.max_steps == -1 or self.max_steps > 0, "max_steps", f"must be -1 or positive, got {self.max_steps}")
        check_finite(self.learning_rate, "learning_rate", 0, "must be positive")
        check(math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0, "max_grad_norm",
              f"must be >= 0 (0: no clipping), got {self.max_grad_norm}")
        check_seed(self.seed, "seed")
        schedulers = [s.value for s in SchedulerType]
        check(self.lr_scheduler_type in schedulers, "lr_scheduler_type",
              f"unknown value {self.lr_scheduler_type!r} (choose from {', '.join(schedulers)})")
        optimizers = [o.value for o in OptimizerNames]
        check(self.optim in optimizers, "optim", f"unknown optimizer {self.optim!r} (e.g. adamw_torch_fused, "
                                                 "adamw_torch, paged_adamw_32bit)")
        check(0 <= self.warmup_ratio < 1, "warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio}")
        check(self.per_device_train_batch_size > 0, "per_device_train_batch_size", "must be positive")
        check(self.gradient_accumulation_steps > 0, "gradient_accumulation_steps", "must be positive")
        check(self.loss in ("completion", "full"), "loss", f"unknown value {self.loss!r} (choose completion or full)")
        if self.neftune_alpha is not None:
            check_finite(self.neftune_alpha, "neftune_alpha", 0, "must be positive")
        check(self.save_steps is None or self.save_steps >= 0, "save_steps", f"must be >= 0, got {self.save_steps}")
        check(self.logging_steps > 0, "logging_steps", f"must be positive, got {self.logging_steps}")
        check_trackers(self.report_to)
        if str(self.gradient_checkpointing).isdigit():
            self.gradient_checkpointing = str(int(self.gradient_checkpointing))  # a layer count
        else:
            self.gradient_checkpointing = auto_true_false(self.gradient_checkpointing, "gradient_checkpointing")
        self.compile_layers = auto_true_false(self.compile_layers, "compile_layers")
        if self.batch_layout is None:
            self.batch_layout = "padded" if self.pad_to_max_length else "flat"
        check(self.batch_layout in ("flat", "padded"), "batch_layout",
              f"unknown value {self.batch_layout!r} (choose flat or padded)")
        check(not (self.pad_to_max_length and self.packing), "pad_to_max_length",
              "pads batches of whole examples; packed rows (--packing True) already have one shape")
        check(not (self.pad_to_max_length and self.batch_layout == "flat" and not self.packing), "pad_to_max_length",
              "pads each example of a padded batch; --batch_layout flat has no padding")
        check(not self.flat_cuda_graphs or (self.batch_layout == "flat" and not self.packing), "flat_cuda_graphs",
              "is for flat batches of whole examples (--batch_layout flat, --packing False)")
        check(not self.flat_cuda_graphs or self.cuda_graphs, "flat_cuda_graphs", "needs --cuda_graphs True")
        check(self.flat_split_tokens >= 0, "flat_split_tokens", f"must be 0 or more, got {self.flat_split_tokens}")
        check(not self.flat_split_tokens or self.flat_cuda_graphs, "flat_split_tokens",
              "splits the steps of --flat_cuda_graphs True")
        check(not self.flat_split_tokens or self.gradient_checkpointing in ("auto", "false", "0"), "flat_split_tokens",
              "runs the parts as CUDA graphs, which a checkpointed layer cannot be (use --gradient_checkpointing "
              "auto or false)")
        check(self.flat_row_multiple >= 0, "flat_row_multiple", f"must be 0 or more, got {self.flat_row_multiple}")
        check(self.matmul_library in MATMUL_LIBRARIES, "matmul_library",
              f"unknown value {self.matmul_library!r} (choose {', '.join(MATMUL_LIBRARIES[:-1])} or "
              f"{MATMUL_LIBRARIES[-1]})")
        check_finite(self.train_memory_gib, "train_memory_gib", 0, "must be positive")


@dataclass
class EvalArguments:
    run_dir: Optional[str] = field(default=None, metadata={"help": "Fine-tuned run directory to evaluate"})
    base_model: Optional[str] = field(
        default=None, metadata={"help": "Base model of --run_dir (default: the one its config.json records): for a "
                                        "run directory copied from another machine"})
    eval_output_dir: Optional[str] = field(
        default=None, metadata={"help": "Where predictions.jsonl and metrics.json go (default: the run directory)"})
    eval_batch_size: int = field(default=64, metadata={"help": "Most prompts per batch (halved on OOM)"})
    eval_batch_tokens: int = field(
        default=16384, metadata={"help": "Most prompt + new tokens per batch: long prompts go in smaller batches, so "
                                         "the memory peak stays flat (about 17 GiB for a 7B model)"})
    eval_memory_gib: float = field(
        default=20.0, metadata={"help": "GPU memory budget for evaluation batches: two probe batches measure what a "
                                        "batch token costs, and batches hold at most the tokens that keep the peak "
                                        "within nine tenths of it (20 leaves headroom on a 24 GB A10G); out of memory "
                                        "still halves a batch as a last resort"})
    max_new_tokens: Optional[int] = field(default=None, metadata={"help": "Most new tokens per answer (default: 20 for "
                                                                                "classification, 100 for SAMSum)"})
    eval_method: str = field(default="generate", metadata={"help": "generate, or loglik (classification only)"})
    num_shots: int = field(default=0, metadata={"help": "Few-shot examples in baseline prompts (0: zero-shot)"})
    max_prompt_tokens: Optional[int] = field(
        default=None, metadata={"help": "Prompt budget (default: model context minus max_new_tokens)"})
    merge_adapter: bool = field(
        default=True, metadata={"help": "Evaluate with dense weights: 4-bit layers de-quantized to the exact values "
                                        "their forward uses, the LoRA adapter kept beside them unmerged (the same "
                                        "function, several times faster; 2 bytes per parameter, about 14.5 GB for "
                                        "a 7B model). False: the 4-bit model with its PEFT adapter"})
    eval_dtype: Optional[str] = field(
        default=None, metadata={"help": "Compute dtype for evaluating a fine-tuned run (default: the one it trained "
                                        "in): bf16, fp16 or fp32. fp32 evaluates the same 4-bit weights and adapter "
                                        "without bf16's rounding of every activation"})

    def __post_init__(self):
        check(self.eval_dtype in (None, "bf16", "fp16", "fp32"), "eval_dtype",
              f"unknown value {self.eval_dtype!r} (choose bf16, fp16 or fp32)")
        check(self.eval_batch_size > 0, "eval_batch_size", f"must be positive, got {self.eval_batch_size}")
        check(self.eval_batch_tokens > 0, "eval_batch_tokens", f"must be positive, got {self.eval_batch_tokens}")
        check_finite(self.eval_memory_gib, "eval_memory_gib", 0, "must be positive")
        check(self.max_new_tokens is None or self.max_new_tokens > 0, "max_new_tokens",
              f"must be positive, got {self.max_new_tokens}")
        check(self.max_prompt_tokens is None or self.max_prompt_tokens > 0, "max_prompt_tokens",
              f"must be positive, got {self.max_prompt_tokens}")
        check(self.eval_method in ("generate", "loglik"), "eval_method",
              f"unknown value {self.eval_method!r} (choose generate or loglik)")
        check(self.num_shots >= 0, "num_shots", f"must be >= 0, got {self.num_shots}")


def to_dict(*instances) -> dict:
    """Resolved arguments, grouped by dataclass, for config.json."""
    return {type(obj).__name__: asdict(obj) for obj in instances}
