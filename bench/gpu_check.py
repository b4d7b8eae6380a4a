"""Checks for a GPU machine, in two parts.

float16: convert a small transformer encoder with the project's fp16 quantize pass, check
its outputs on CPU onnxruntime (no NaN/Inf, cosine to float32), then time the same encoder
in torch, float32 vs float16, on CUDA at batch 1 and 8.

2:4: prune an MLP with the project's prune pass (`method: 2:4`, training device cuda), check
that every group of 4 weights along the input dimension of each pruned layer has at most 2
non-zeros, then on CUDA time its largest layer in float16 dense against the same weights as
a torch semi-structured sparse tensor (`to_sparse_semi_structured`, sparse tensor cores)
and compare the outputs.

Training on CUDA: a CNN trained on scikit-learn's bundled digits, then the project's
structured-pruning pass with fine-tuning (the training loop distillation uses too), run with
training device cpu and cuda; prints the wall time of each pass, the accuracy of the
ONNX model it returns (onnxruntime CPU, held-out split) and the GPU memory the pass used, which
shows the training really ran on the device.

onnxruntime: which execution providers the installed build offers (the CUDA provider needs
the onnxruntime-gpu build, which the `gpu` extra installs).

    python bench/gpu_check.py [--iterations 50]     # from the repository root

Needs torch, onnx, onnxruntime (a CPU build is enough) and what `optimizers` imports
(numpy, pydantic, psutil); nothing of the service. Without CUDA the torch timing is
skipped with a line saying so, so the script can be checked on any machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from optimizers.config import Fp16Config, PruneConfig  # noqa: E402
from optimizers.registry import run_pass  # noqa: E402
from optimizers.results import PassContext  # noqa: E402

D_MODEL, HEADS, LAYERS, SEQ_LEN, CLASSES = 384, 6, 4, 128, 10
BATCH_SIZES = (1, 8, 64)
MIN_COSINE = 0.999


def build_encoder() -> object:
    """The benchmark's encoder shape (MiniLM-sized): 4 post-norm layers, GELU, mean-pool
    and a linear head; each weight matrix with its own Xavier-uniform draw."""
    import torch

    class EncoderClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(
                D_MODEL, HEADS, 4 * D_MODEL, dropout=0.0, activation="gelu", batch_first=True
            )
            self.encoder = torch.nn.TransformerEncoder(
                layer, num_layers=LAYERS, enable_nested_tensor=False
            )
            self.head = torch.nn.Linear(D_MODEL, CLASSES)
            for parameter in self.encoder.parameters():
                if parameter.dim() > 1:
                    torch.nn.init.xavier_uniform_(parameter)

        def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(embeddings).mean(dim=1))

    torch.manual_seed(0)
    return EncoderClassifier().eval()


def export(module: object, path: Path, example: object, input_name: str) -> None:
    """`module` as ONNX with one input and a `logits` output, batch axis dynamic."""
    import torch

    assert isinstance(module, torch.nn.Module)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel has no ONNX export
    try:
        with torch.no_grad():
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=["logits"],
                dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def to_fp16(model_path: Path, workdir: Path) -> tuple[Path, str]:
    """The project's fp16 pass; onnxruntime's converter only when the pass is missing or
    fails, said loudly, since then the project's path is not what was checked."""
    try:
        config = Fp16Config()
        result = run_pass(model_path, config, PassContext(workdir=workdir / "fp16", datasets={}))
        return result.model_path, "optimizers quantize pass (method fp16)"
    except Exception as exc:
        print(f"!! the project's fp16 pass failed ({type(exc).__name__}: {exc});")
        print("!! falling back to onnxruntime.transformers.float16 (keep_io_types=True)")
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    converted = convert_float_to_float16(onnx.load(str(model_path)), keep_io_types=True)
    path = workdir / "encoder.fp16-fallback.onnx"
    onnx.save(converted, str(path))
    return path, "onnxruntime.transformers.float16 (fallback)"


def check_onnx(fp32: Path, fp16: Path, inputs: np.ndarray) -> bool:
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    reference = ort.InferenceSession(str(fp32), providers=providers).run(
        None, {"embeddings": inputs}
    )[0]
    output = ort.InferenceSession(str(fp16), providers=providers).run(None, {"embeddings": inputs})[
        0
    ]
    finite = bool(np.all(np.isfinite(output)))
    cosine = np.sum(reference * output, axis=1) / (
        np.linalg.norm(reference, axis=1) * np.linalg.norm(output, axis=1)
    )
    top1 = float(np.mean(np.argmax(reference, axis=1) == np.argmax(output, axis=1)))
    ok = finite and float(cosine.min()) >= MIN_COSINE
    print(
        f"onnxruntime CPU, fp16 vs fp32 on {len(inputs)} samples: output dtype {output.dtype}, "
        f"all finite {finite}, cosine mean {cosine.mean():.6f} min {cosine.min():.6f}, "
        f"top-1 agreement {top1:.3f} -> {'OK' if ok else 'FAILED'} (cosine >= {MIN_COSINE})"
    )
    return ok


def time_cuda(module: object, iterations: int, warmup: int) -> None:
    import torch

    assert isinstance(module, torch.nn.Module)
    if not torch.cuda.is_available():
        print("CUDA is not available: skipping the torch fp32/fp16 timing on GPU")
        return
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    fp32 = module.cuda()
    fp16 = build_encoder().half().cuda()  # same seed, same weights, then float16
    rows = []
    with torch.inference_mode():
        for batch in BATCH_SIZES:
            x = torch.randn(batch, SEQ_LEN, D_MODEL, device="cuda")
            medians = {}
            for name, model, inputs in (("fp32", fp32, x), ("fp16", fp16, x.half())):
                for _ in range(warmup):
                    model(inputs)
                torch.cuda.synchronize()
                times = []
                for _ in range(iterations):
                    began = time.perf_counter()
                    model(inputs)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - began)
                medians[name] = float(np.median(times)) * 1e3
            finite = bool(torch.isfinite(fp16(x.half())).all())
            cosine = torch.nn.functional.cosine_similarity(
                fp32(x), fp16(x.half()).float(), dim=1
            ).mean()
            rows.append((batch, medians["fp32"], medians["fp16"], finite, float(cosine)))
    print("| batch | torch fp32 p50 ms | torch fp16 p50 ms | speedup | fp16 finite | cosine |")
    print("|---|---|---|---|---|---|")
    for batch, ms32, ms16, finite, cosine in rows:
        print(
            f"| {batch} | {ms32:.3f} | {ms16:.3f} | {ms32 / ms16:.2f}x | {finite} | {cosine:.5f} |"
        )


#: The 2:4 check's MLP: widths that semi-structured kernels accept (multiples of 64).
SPARSE_WIDTHS = (1024, 4096, 1024)
SPARSE_BATCHES = (8, 2048, 16384)


def build_mlp() -> object:
    import torch

    torch.manual_seed(0)
    first, hidden, last = SPARSE_WIDTHS
    return torch.nn.Sequential(
        torch.nn.Linear(first, hidden),
        torch.nn.ReLU(),
        torch.nn.Linear(hidden, last),
        torch.nn.ReLU(),
        torch.nn.Linear(last, CLASSES),
    ).eval()


def prune_two_four(workdir: Path) -> tuple[Path, bool]:
    """The project's 2:4 pass on the MLP; whether every pruned layer holds the pattern."""
    import onnx
    import torch
    from onnx import numpy_helper

    source = workdir / "mlp.onnx"
    export(build_mlp(), source, torch.randn(2, SPARSE_WIDTHS[0]), "x")
    context = PassContext(workdir=workdir / "two-four", datasets={}, device="cuda")
    result = run_pass(source, PruneConfig(kind="prune", method="2:4"), context)
    ok = True
    pruned_layers = 0
    for tensor in onnx.load(str(result.model_path)).graph.initializer:
        weight = numpy_helper.to_array(tensor)
        if weight.ndim != 2 or weight.shape[1] % 4:
            continue
        kept = (weight.reshape(weight.shape[0], -1, 4) != 0).sum(axis=2)
        if kept.max() <= 2:
            pruned_layers += 1
        elif weight.shape[0] != CLASSES:  # the output layer is left dense on purpose
            ok = False
            print(f"!! {tensor.name}: a group of 4 holds {kept.max()} non-zeros")
    details = result.details
    print(
        f"2:4 pass: {pruned_layers} layer(s) with at most 2 non-zeros in every group of 4, "
        f"sparsity {details.get('sparsity'):.3f} of the pruned layers, kept dense: "
        f"{details.get('kept_layers') or 'none'} -> {'OK' if ok and pruned_layers else 'FAILED'}"
    )
    for note in result.notes:
        print(f"   note: {note}")
    return result.model_path, ok and pruned_layers > 0


def time_two_four(model_path: Path, iterations: int, warmup: int) -> None:
    """Dense float16 against semi-structured sparse float16 for the MLP's largest layer."""
    import onnx
    import torch
    from onnx import numpy_helper

    if not torch.cuda.is_available():
        print("CUDA is not available: skipping the 2:4 sparse tensor core timing")
        return
    try:
        from torch.sparse import to_sparse_semi_structured  # noqa: F401
    except ImportError as exc:
        print(f"this torch has no semi-structured sparsity ({exc}): skipping the timing")
        return
    weights = [
        numpy_helper.to_array(t)
        for t in onnx.load(str(model_path)).graph.initializer
        if numpy_helper.to_array(t).ndim == 2
    ]
    weight = max(weights, key=lambda w: w.size)
    dense = torch.from_numpy(weight.copy()).half().cuda()
    # The exporter stores Linear weights as [out, in] (Gemm transB) or [in, out] (MatMul).
    if dense.shape[1] not in SPARSE_WIDTHS[:2]:
        dense = dense.t().contiguous()
    print(f"largest pruned layer: {tuple(dense.shape)} float16")
    time_sparse_backends(dense, iterations, warmup)


def time_sparse_backends(dense: Any, iterations: int, warmup: int) -> None:
    """Dense float16 against each semi-structured backend torch has (cuSPARSELt, CUTLASS)."""
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    print("| backend | batch | dense fp16 p50 ms | 2:4 sparse fp16 p50 ms | speedup | cosine |")
    print("|---|---|---|---|---|---|")
    for backend, force_cutlass in (("cuSPARSELt", False), ("CUTLASS", True)):
        SparseSemiStructuredTensor._FORCE_CUTLASS = force_cutlass
        try:
            sparse = to_sparse_semi_structured(dense)
        except Exception as exc:
            print(f"| {backend} | refused the weight: {type(exc).__name__}: {exc} | | | | |")
            continue
        try:
            time_sparse_backend(backend, dense, sparse, iterations, warmup)
        except RuntimeError as exc:  # e.g. CUTLASS's kernels exist for compute capability 8.x only
            print(f"| {backend} | refused the product: {exc} | | | | |")
    SparseSemiStructuredTensor._FORCE_CUTLASS = False


def time_sparse_backend(
    backend: str, dense: Any, sparse: Any, iterations: int, warmup: int
) -> None:
    import torch

    with torch.inference_mode():
        for batch in SPARSE_BATCHES:
            x = torch.randn(batch, dense.shape[1], device="cuda", dtype=torch.float16)
            medians = {}
            outputs = {}
            for name, matrix in (("dense", dense), ("sparse", sparse)):
                for _ in range(warmup):
                    torch.nn.functional.linear(x, matrix)
                torch.cuda.synchronize()
                times = []
                for _ in range(iterations):
                    began = time.perf_counter()
                    outputs[name] = torch.nn.functional.linear(x, matrix)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - began)
                medians[name] = float(np.median(times)) * 1e3
            cosine = torch.nn.functional.cosine_similarity(
                outputs["dense"].float().flatten(), outputs["sparse"].float().flatten(), dim=0
            )
            print(
                f"| {backend} | {batch} | {medians['dense']:.4f} | {medians['sparse']:.4f} | "
                f"{medians['dense'] / medians['sparse']:.2f}x | {float(cosine):.5f} |"
            )


def check_training(epochs: int) -> bool:
    """Structured pruning with fine-tuning and distillation, trained on cpu and on cuda."""
    import onnxruntime as ort
    import torch

    from bench.prune_distill import INPUT, load_digits_32, train_teacher

    cuda = torch.cuda.is_available()
    if not cuda:
        print("CUDA is not available: the training passes run on cpu only")
    training = {"dataset_id": "train", "epochs": epochs, "batch_size": 64, "seed": 0}
    # A derived distillation student is this same pruned model trained the same way, so one
    # pass covers both training paths.
    configs = {
        "structured 50% + fine-tuning": PruneConfig(
            kind="prune", method="structured", ratio=0.5, finetune=training
        ),
    }
    ok = True
    with tempfile.TemporaryDirectory(prefix="modelpress-gpu-check-") as tmp:
        workdir = Path(tmp)
        x_train, x_test, y_train, y_test = load_digits_32(0)
        np.savez(workdir / "train.npz", **{INPUT: x_train, "labels": y_train})
        teacher = train_teacher(x_train, y_train, epochs=8, seed=0, path=workdir / "cnn.onnx")

        def accuracy(path: Path) -> float:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            logits = session.run(None, {INPUT: x_test})[0]
            return float(np.mean(np.argmax(logits, axis=1) == y_test))

        print(f"teacher (digits CNN, trained here): test accuracy {accuracy(teacher):.4f}")
        print("| pass | training device | seconds | test accuracy | peak GPU memory MB |")
        print("|---|---|---|---|---|")
        for name, config in configs.items():
            for device in ("cpu", "cuda") if cuda else ("cpu",):
                if cuda:
                    torch.cuda.reset_peak_memory_stats()
                    held = torch.cuda.memory_allocated()
                context = PassContext(
                    workdir=workdir / f"{name[:5]}-{device}",
                    datasets={"train": workdir / "train.npz"},
                    device=device,
                )
                began = time.perf_counter()
                result = run_pass(teacher, config, context)
                seconds = time.perf_counter() - began
                # What the pass itself allocated on the GPU, beyond what earlier checks hold.
                peak_mb = (torch.cuda.max_memory_allocated() - held) / 2**20 if cuda else 0.0
                if device == "cuda" and peak_mb == 0:
                    ok = False
                    print(f"!! {name}: nothing was allocated on the GPU: training ran on cpu")
                print(
                    f"| {name} | {device} | {seconds:.1f} | "
                    f"{accuracy(result.model_path):.4f} | {peak_mb:.0f} |"
                )
    return ok


def report_onnxruntime_providers() -> None:
    import onnxruntime as ort

    providers = ort.get_available_providers()
    print(f"onnxruntime {ort.__version__}: providers {providers}")
    if "CUDAExecutionProvider" not in providers:
        print(
            "the CUDA execution provider is not in this onnxruntime build: benchmarks with "
            "device 'cuda' are not checked here (they need the onnxruntime-gpu build)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per pass")
    args = parser.parse_args()
    import torch

    report_onnxruntime_providers()

    module = build_encoder()
    with tempfile.TemporaryDirectory(prefix="modelpress-gpu-check-") as tmp:
        workdir = Path(tmp)
        fp32_path = workdir / "encoder.onnx"
        export(module, fp32_path, torch.randn(2, SEQ_LEN, D_MODEL), "embeddings")
        fp16_path, how = to_fp16(fp32_path, workdir)
        print(
            f"encoder d_model {D_MODEL}, {HEADS} heads, {LAYERS} layers, seq {SEQ_LEN}: "
            f"fp32 {fp32_path.stat().st_size / 1e6:.1f} MB, fp16 "
            f"{fp16_path.stat().st_size / 1e6:.1f} MB via {how}"
        )
        inputs = np.random.default_rng(1).standard_normal((16, SEQ_LEN, D_MODEL))
        ok = check_onnx(fp32_path, fp16_path, inputs.astype(np.float32))
    time_cuda(module, args.iterations, args.warmup)

    with tempfile.TemporaryDirectory(prefix="modelpress-gpu-check-") as tmp:
        pruned, two_four_ok = prune_two_four(Path(tmp))
        time_two_four(pruned, args.iterations, args.warmup)
    training_ok = check_training(args.epochs)
    if not (ok and two_four_ok and training_ok):
        sys.exit(1)


if __name__ == "__main__":
    main()
