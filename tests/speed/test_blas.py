"""--matmul_library: the library PyTorch computes CUDA matrix products with while a run trains, and nothing else."""

import pytest
import torch


class _FakeBlas:
    """torch.backends.cuda.preferred_blas_library without a GPU: records each choice, returns the current one."""

    def __init__(self, current="cublaslt"):  # as TORCH_BLAS_PREFER_CUBLASLT=1 would start it
        self.current, self.calls = current, []

    def __call__(self, backend=None):
        if backend is not None:
            self.calls.append(backend)
            self.current = backend
        return self.current


@pytest.fixture
def fake_gpu_blas(monkeypatch):
    fake = _FakeBlas()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library", fake)
    return fake


def test_the_library_is_chosen_for_training_and_the_previous_choice_restored(fake_gpu_blas):
    from zephyr.speed.blas import use_matmul_library

    restore = use_matmul_library("cublas")
    assert fake_gpu_blas.calls == ["cublas"] and fake_gpu_blas.current == "cublas"
    restore()  # back to the choice found, not to a fixed library
    assert fake_gpu_blas.calls == ["cublas", "cublaslt"] and fake_gpu_blas.current == "cublaslt"
    use_matmul_library("default")()  # PyTorch's own choice (and TORCH_BLAS_PREFER_CUBLASLT) left alone
    assert fake_gpu_blas.calls == ["cublas", "cublaslt"]
    with pytest.raises(ValueError, match="unknown matmul library 'mkl'"):
        use_matmul_library("mkl")


def test_without_a_gpu_nothing_changes(monkeypatch):
    from zephyr.speed.blas import use_matmul_library

    fake = _FakeBlas()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cuda, "preferred_blas_library", fake)
    use_matmul_library("cublaslt")()
    assert fake.calls == []


def test_the_trainer_applies_the_flag_and_its_restore_undoes_it(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    """build_trainer (training runs and the benchmark's settings) sets the library; restore() puts the previous one
    back, so that the benchmark's next setting and the evaluation after training start from PyTorch's choice."""
    from peft import get_peft_model

    import zephyr.training
    from conftest import training_rows
    from zephyr.config import DataArguments, ModelArguments, TrainArguments
    from zephyr.modeling import build_lora_config, load_model
    from zephyr.speed.blas import use_matmul_library

    chosen = []

    def recording(name):
        chosen.append(name)
        undo = use_matmul_library(name)
        return lambda: (chosen.append(f"restored after {name}"), undo())

    monkeypatch.setattr(zephyr.training, "use_matmul_library", recording)
    model_args = ModelArguments(model_name_or_path=str(tiny_model_dir), quantization="none", lora_targets="attention")
    model = get_peft_model(load_model(model_args), build_lora_config(model_args))
    train_args = TrainArguments(output_root=str(tmp_path), max_steps=1, optim="adamw_torch", compile_layers="false",
                                gradient_checkpointing="false", matmul_library="cublaslt")
    _, restore, _ = zephyr.training.build_trainer(model, tokenizer, training_rows(tokenizer),
                                                  DataArguments(max_length=96), model_args, train_args, tmp_path / "r")
    assert chosen == ["cublaslt"]
    restore()
    assert chosen == ["cublaslt", "restored after cublaslt"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="cuBLAS and cuBLASLt need a CUDA GPU")
def test_cublaslt_products_agree_with_cublas_to_bf16_precision():
    """Both libraries compute Mistral-7B's projection products at step lengths a flat batch meets to bf16 precision:
    each within 2^-8 of an fp32 reference by norm (rounding the output to bf16 is at most 2^-9 relative, and
    PyTorch lets bf16 products reduce partial sums in reduced precision), and within 2^-8 of each other. A wrong
    product (a transposed or stale operand, a kernel reading past a row) is off by order 1."""
    torch.manual_seed(0)
    before = torch.backends.cuda.preferred_blas_library()
    try:
        for rows, (out_features, in_features) in [(1117, (4096, 4096)), (2193, (1024, 4096)),
                                                   (3051, (14336, 4096)), (1571, (4096, 14336))]:
            x = torch.randn(rows, in_features, device="cuda", dtype=torch.bfloat16)
            w = torch.randn(out_features, in_features, device="cuda", dtype=torch.bfloat16) / in_features ** 0.5
            reference = x.float() @ w.float().T  # fp32 products: TF32 is off by default
            results = {}
            for library, backend in (("cublas", torch._C._BlasBackend.Cublas),
                                     ("cublaslt", torch._C._BlasBackend.Cublaslt)):
                torch.backends.cuda.preferred_blas_library(library)
                assert torch.backends.cuda.preferred_blas_library() == backend
                results[library] = torch.nn.functional.linear(x, w).float()
            for library, result in results.items():
                error = ((result - reference).norm() / reference.norm()).item()
                assert error < 2 ** -8, (rows, library, error)
            between = ((results["cublaslt"] - results["cublas"]).norm() / reference.norm()).item()
            assert between < 2 ** -8, (rows, between)
    finally:
        torch.backends.cuda.preferred_blas_library(before)


def test_a_training_run_that_fails_still_restores_the_library(tiny_model_dir, synthetic_data, tmp_path, monkeypatch):
    """The library is chosen for training only: when training raises, the previous choice comes back all the same
    (a notebook or a library caller goes on in the same process)."""
    import zephyr.training
    from conftest import run_args
    from zephyr.trl_compat import _suite_trainer_class

    events = []

    def recording(name):
        events.append(f"chose {name}")
        return lambda: events.append("restored")

    def failing_train(self, *args, **kwargs):
        events.append("training")
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(zephyr.training, "use_matmul_library", recording)
    monkeypatch.setattr(_suite_trainer_class(), "train", failing_train)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        zephyr.training.train(*run_args(tiny_model_dir, synthetic_data, tmp_path, max_steps=2,
                                        matmul_library="cublaslt"))
    assert events == ["chose cublaslt", "training", "restored"]
