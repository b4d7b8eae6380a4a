"""A worker takes the `gpu` queue only once its GPU proved itself. This machine has no GPU:
the refusal runs the real check; only the success path fakes the GPU probe."""

from __future__ import annotations

from worker.gpu_check import ProbeResult, choose_queues, run_probe

H200 = {
    "kind": "cuda",
    "execution_provider": "CUDAExecutionProvider",
    "name": "NVIDIA H200",
    "memory_bytes": 150_000_000_000,
    "driver": "570.86.15",
    "compute_capability": "9.0",
}


def test_without_a_cuda_provider_the_gpu_queue_is_refused_and_the_others_kept() -> None:
    choice = choose_queues(["gpu", "cpu"], probe=run_probe, timeout_s=120)
    assert choice.queues == ["cpu"]
    assert "CUDAExecutionProvider" in choice.refused["gpu"]
    assert choice.device == {"kind": "cpu"}


def test_a_worker_started_only_for_gpu_keeps_no_queue_without_a_gpu() -> None:
    choice = choose_queues(["gpu"], probe=run_probe, timeout_s=120)
    assert choice.queues == [] and "gpu" in choice.refused


def test_a_gpu_that_passes_its_check_is_served_and_described() -> None:
    def probe(timeout_s: float) -> ProbeResult:
        return ProbeResult(ok=True, device=H200)

    choice = choose_queues(["cpu", "gpu"], probe=probe)
    assert choice.queues == ["cpu", "gpu"]
    assert choice.refused == {}
    assert choice.device == H200


def test_a_cpu_worker_never_probes_a_gpu() -> None:
    def probe(timeout_s: float) -> ProbeResult:
        raise AssertionError("probed")

    choice = choose_queues(["cpu"], probe=probe)
    assert choice == choose_queues(["cpu"], probe=probe)
    assert choice.queues == ["cpu"] and choice.device == {"kind": "cpu"}


def test_a_check_that_does_not_answer_in_time_is_a_refusal() -> None:
    result = run_probe(0.001)
    assert not result.ok and "did not finish" in result.reason
