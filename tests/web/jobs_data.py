"""Jobs with results for the fast page tests: submitted through /v1, then claimed, finished
and given artifacts through the same functions and storage layout a worker uses. The results
and sensitivity reports are ones real workers wrote (tests/web/recorded/worker_results.json):
`faster` (prune + quantize, faster at every batch size), `unclear` (no measurable speed
difference) and `slower` (a static quantization that is slower than the original, with a
sensitivity report that suggests excluding `fc2`)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from tests.api.helpers import upload_dataset, upload_model
from tests.models.onnx_basic import make_dataset, make_mlp

WORKER_RESULTS: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent / "recorded" / "worker_results.json").read_text()
)
#: The node the `slower` result's sensitivity report suggests keeping in float.
SUGGESTED_NODE = "fc2"


def upload_mlp(client: TestClient, folder: Path) -> tuple[str, str]:
    """A model and its dataset in the client's project: (model id, dataset id)."""
    folder.mkdir(parents=True, exist_ok=True)
    model_path = make_mlp(folder / "mlp.onnx")
    model = upload_model(client, model_path)
    dataset = upload_dataset(client, make_dataset(folder / "data.npz", model_path))
    return model["id"], dataset["id"]


def quantize_spec(model_id: str, dataset_id: str) -> dict[str, Any]:
    return {
        "model_id": model_id,
        "passes": [
            {
                "kind": "quantize",
                "method": "static",
                "calibration": {"dataset_id": dataset_id, "samples": 32},
            }
        ],
        "evaluate": {"dataset_id": dataset_id, "max_drop": 0.01},
        "benchmark": {"batch_sizes": [1, 8], "warmup": 2, "iterations": 10},
    }


def submit(client: TestClient, spec: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def store_artifact(
    project_id: str, job_id: str, *, kind: str, name: str, content: bytes, folder: Path
) -> str:
    """A file a worker leaves for the job, in storage and in the database."""
    from core.db import new_id, session_factory
    from core.storage import get_storage
    from core.storage_keys import artifact_key, attempt_prefix
    from core.tables import Artifact

    path = folder / f"{job_id}-{name}"
    path.write_bytes(content)
    artifact_id = new_id("art")
    storage_key = artifact_key(attempt_prefix(project_id, job_id, 1), name)
    get_storage().put_file(storage_key, path)
    with session_factory()() as session:
        session.add(
            Artifact(
                id=artifact_id,
                project_id=project_id,
                job_id=job_id,
                kind=kind,
                name=name,
                content_type="application/json"
                if name.endswith(".json")
                else "application/octet-stream",
                sha256=hashlib.sha256(content).hexdigest(),
                size_bytes=len(content),
                storage_key=storage_key,
            )
        )
        session.commit()
    return artifact_id


def finish_like_a_worker(
    job_id: str, project_id: str, which: str, folder: Path, *, dataset_id: str
) -> dict[str, str]:
    """Claims the job, finishes it with the stored real result `which` and leaves the
    artifacts a quantize job leaves. Returns the artifact ids by kind."""
    from core import jobstate
    from core.db import session_factory
    from core.tables import JobStatus

    recorded = WORKER_RESULTS[which]
    with session_factory()() as session:
        attempt = jobstate.claim(session, job_id, "test-worker")
        assert attempt == 1
        assert jobstate.finish(
            session, job_id, attempt, status=JobStatus.succeeded, result=recorded["result"]
        )
        session.commit()
    folder.mkdir(parents=True, exist_ok=True)
    ids = {
        "model": store_artifact(
            project_id,
            job_id,
            kind="model",
            name="optimized.onnx",
            content=b"optimized model of " + job_id.encode(),
            folder=folder,
        ),
        "report": store_artifact(
            project_id,
            job_id,
            kind="report",
            name="report.json",
            content=json.dumps(recorded["result"]).encode(),
            folder=folder,
        ),
    }
    names = [
        p["sensitivity"]["artifact"] for p in recorded["result"]["passes"] if "sensitivity" in p
    ]
    for name, report in zip(names, recorded["sensitivity"], strict=True):
        # The report names the dataset of the run it came from; here it is this test's.
        text = json.dumps(report)
        old = (report.get("inputs") or {}).get("dataset_id")
        if old:
            text = text.replace(old, dataset_id)
        ids["sensitivity"] = store_artifact(
            project_id,
            job_id,
            kind="sensitivity",
            name=name,
            content=text.encode(),
            folder=folder,
        )
    return ids


def project_id_of(client: TestClient) -> str:
    return str(next(p["id"] for p in client.get("/v1/projects").json() if p["name"] == "default"))
