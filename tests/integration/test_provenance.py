"""A succeeded job's provenance manifest, from a real worker: the hashes check the files a
user uploaded and downloads, and its spec submits the same job again."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

import httpx
import onnxruntime as ort

from tests.client.test_cli_delete import cli
from tests.integration.processes import Service
from tests.integration.test_end_to_end import upload, wait_for_job
from tests.models.onnx_basic import make_dataset, make_mlp
from tests.web.conftest import sign_in


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_succeeded_job_has_a_manifest_that_checks_and_reproduces_it(
    embedded_service: Service, tmp_path: Path
) -> None:
    model_path = make_mlp(tmp_path / "mlp.onnx", hidden=32)
    data_path = make_dataset(tmp_path / "data.npz", model_path, samples=16)
    with embedded_service.client() as client:
        model = upload(client, "/v1/models", model_path)
        dataset = upload(client, "/v1/datasets", data_path)
        spec = {
            "model_id": model["id"],
            "passes": [{"kind": "quantize", "method": "dynamic"}],
            "evaluate": {"dataset_id": dataset["id"], "max_drop": 0.5},
            "benchmark": {"batch_sizes": [1], "warmup": 1, "iterations": 3},
        }
        created = client.post("/v1/jobs", json=spec)
        assert created.status_code == 202, created.text
        job = wait_for_job(embedded_service, client, created.json()["id"], {"succeeded", "failed"})
        assert job["status"] == "succeeded", f"{job['error']}\n{embedded_service.dump_logs()}"

        response = client.get(f"/v1/jobs/{job['id']}/provenance")
        assert response.status_code == 200, response.text
        manifest = response.json()
        artifacts = {a["name"]: a for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()}
        # The manifest is an artifact like the others: the dashboard and downloads list it.
        assert artifacts["provenance.json"]["kind"] == "provenance"

        # Inputs: the bytes the user uploaded.
        inputs = manifest["inputs"]
        assert inputs["model"]["id"] == model["id"]
        assert inputs["model"]["sha256"] == model["sha256"] == _sha256(model_path.read_bytes())
        assert inputs["datasets"] == {
            dataset["id"]: {
                "sha256": _sha256(data_path.read_bytes()),
                "size_bytes": data_path.stat().st_size,
            }
        }
        # Outputs: each file the job produced, checkable after download.
        listed = {entry["name"]: entry for entry in manifest["artifacts"]}
        assert set(listed) == set(artifacts) - {"provenance.json"}
        optimized = client.get(f"/v1/artifacts/{artifacts['optimized.onnx']['id']}/content")
        assert optimized.status_code == 200
        assert listed["optimized.onnx"]["sha256"] == _sha256(optimized.content)
        assert listed["optimized.onnx"]["size_bytes"] == len(optimized.content)
        report = client.get(f"/v1/jobs/{job['id']}/report")
        assert listed["report.json"]["sha256"] == _sha256(report.content)
        # A pass's own outputs name their pass; the job's final files name none.
        stage_files = [a for a in artifacts.values() if a["kind"] == "stage_model"]
        assert stage_files, artifacts
        for stage_file in stage_files:
            assert listed[stage_file["name"]]["pass"] == 1
            assert listed[stage_file["name"]]["sha256"] == stage_file["sha256"]
        assert "pass" not in listed["optimized.onnx"]

        assert manifest["versions"]["onnxruntime"] == ort.__version__
        assert manifest["versions"]["python"]
        hardware = manifest["hardware"]
        assert hardware["cpu_model"] and hardware["cores"]
        assert hardware["execution_provider"] == "CPUExecutionProvider"
        assert manifest["spec_version"] == manifest["recipe"]["spec_version"] == 2
        assert list(manifest["recipe"]) == sorted(manifest["recipe"])
        assert manifest["recipe"] == job["spec"]

        # The dashboard's job page lists the manifest with the other files.
        browser = httpx.Client(base_url=embedded_service.base_url, timeout=30)
        with browser:
            sign_in(browser)  # type: ignore[arg-type]
            page = browser.get(f"/jobs/{job['id']}")
        assert page.status_code == 200
        manifest_artifact = artifacts["provenance.json"]
        assert f"/jobs/{job['id']}/artifacts/{manifest_artifact['id']}" in page.text
        assert manifest_artifact["sha256"] in page.text

        reproduce = manifest["reproduce"]
        assert reproduce["cli"].startswith("modelpress submit ")
        again = client.post(reproduce["path"], json=reproduce["spec"])
        assert again.status_code == 202, again.text
        rerun = again.json()
        try:
            assert rerun["spec"] == manifest["recipe"]
            assert rerun["id"] != job["id"]
        finally:
            client.post(f"/v1/jobs/{rerun['id']}/cancel")

        # The CLI line, with reproduce.spec saved where it says (answering at once, not waiting).
        (tmp_path / reproduce["spec_file"]).write_text(json.dumps(reproduce["spec"]))
        command = shlex.split(reproduce["cli"])
        assert command[:3] == ["modelpress", "submit", reproduce["spec_file"]]
        ran = cli(embedded_service, tmp_path, *command[1:3], "--json")
        assert ran.returncode == 0, ran.stderr
        submitted = json.loads(ran.stdout)
        client.post(f"/v1/jobs/{submitted['id']}/cancel")
        assert submitted["spec"] == manifest["recipe"]
