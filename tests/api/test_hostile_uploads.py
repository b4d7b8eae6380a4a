"""Hostile and broken uploads against the real endpoints: each is refused with a clear
problem, nothing runs, nothing is written outside the data folder, nothing is registered."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from tests.api.helpers import upload_model
from tests.models.onnx_basic import make_mlp

LIMIT = 5 * 1024 * 1024  # MODELPRESS_MAX_UPLOAD_BYTES in service_env


def post(client: TestClient, url: str, filename: str, data: bytes, **fields: str) -> Any:
    return client.post(url, files={"file": (filename, data)}, data=fields or None)


def assert_refused(response: Any, status: int, *fragments: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    for fragment in fragments:
        assert fragment in problem["detail"], problem["detail"]
    return problem


def assert_nothing_registered(client: TestClient, service_env: dict[str, str]) -> None:
    assert client.get("/v1/models").json()["items"] == []
    assert client.get("/v1/datasets").json()["items"] == []
    data_dir = Path(service_env["MODELPRESS_DATA_DIR"])
    assert [p for p in (data_dir / "tmp").rglob("*")] == []
    storage = data_dir / "storage"
    assert not storage.exists() or [p for p in storage.rglob("*") if p.is_file()] == []
    assert [p for p in data_dir.rglob("*") if p.is_symlink()] == []


# --- pickles -----------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _torch_save_zip(payload: bytes) -> bytes:
    """The layout torch.save writes: a zip with `<root>/data.pkl`."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("weights/data.pkl", payload)
        archive.writestr("weights/version", "3\n")
    return buffer.getvalue()


def _torchscript_zip(marker: Path) -> bytes:
    """A TorchScript archive whose data.pkl names its module class first, as torch.jit.save
    does, and then calls os.system."""
    data_pkl = (
        b"(c__torch__.net\nNet\n"  # MARK, the root class (what the format check looks for)
        + f"cos\nsystem\n(S'touch {marker}'\ntR".encode()  # os.system('touch …')
        + b"l."  # LIST, STOP
    )
    source = "class Net(Module):\n  def forward(self, x: Tensor) -> Tensor:\n    return x\n"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("net/data.pkl", data_pkl)
        archive.writestr("net/constants.pkl", b"\x80\x02).")
        archive.writestr("net/code/__torch__/net.py", source)
        archive.writestr("net/version", "1\n")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("model.pt", "pickle-protocol-2"),
        ("model.pth", "pickle-protocol-0"),
        ("model.pt", "torch-save-zip"),
        ("model.pt", "torchscript-zip"),
    ],
)
def test_pickle_that_runs_code_is_refused_and_never_unpickled(
    client: TestClient, service_env: dict[str, str], tmp_path: Path, name: str, kind: str
) -> None:
    import pickle

    marker = tmp_path / "pwned"
    payload = {
        "pickle-protocol-2": lambda: pickle.dumps(_RunsCode(marker), protocol=2),
        "pickle-protocol-0": lambda: pickle.dumps(_RunsCode(marker), protocol=0),
        "torch-save-zip": lambda: _torch_save_zip(pickle.dumps(_RunsCode(marker), protocol=2)),
        "torchscript-zip": lambda: _torchscript_zip(marker),
    }[kind]()
    fields = {"input_shapes": json.dumps({"x": ["batch", 4]})} if kind == "torchscript-zip" else {}
    problem = assert_refused(post(client, "/v1/models", name, payload, **fields), 422)
    assert problem["type"].endswith("invalid_model")
    if kind == "torchscript-zip":
        assert "os.system" in problem["detail"]
    assert not marker.exists()
    assert_nothing_registered(client, service_env)


def test_dataset_npz_that_is_really_a_pickle_is_refused_unread(
    client: TestClient, service_env: dict[str, str], tmp_path: Path
) -> None:
    import pickle

    marker = tmp_path / "pwned"
    raw = pickle.dumps(_RunsCode(marker), protocol=2)
    # An object array inside a real .npz carries the same pickle in its data.
    array = np.empty(2, dtype=object)
    array[:] = [_RunsCode(marker), 1]
    buffer = io.BytesIO()
    np.savez(buffer, x=array)
    for payload in (raw, buffer.getvalue()):
        response = post(client, "/v1/datasets", "data.npz", payload)
        assert_refused(response, 422)
    assert "Python objects" in response.json()["detail"]
    assert not marker.exists()
    assert_nothing_registered(client, service_env)


# --- PyTorch operators outside the allow-list ----------------------------------------------


def _torchscript_reading(path: Path, secret: Path) -> bytes:
    """A real TorchScript archive whose forward adds the first floats of `secret`."""
    import torch

    class ReadsAFile(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.path = str(secret)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + torch.from_file(self.path, shared=False, size=4)

    torch.jit.script(ReadsAFile()).save(str(path))
    return path.read_bytes()


def _program_calling(path: Path, target: str) -> bytes:
    """A real torch.export program with one node's target replaced by `target`."""
    from tests.models.torch_programs import rewrite_zip, save_pt2

    save_pt2(path)
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("models/model.json"))
        program = json.loads(archive.read(name))
    program["graph_module"]["graph"]["nodes"][0]["target"] = target
    return rewrite_zip(
        path, path.with_suffix(".edited.pt2"), {name: json.dumps(program).encode()}
    ).read_bytes()


def test_pytorch_programs_calling_unsafe_operators_are_422_naming_the_operator(
    client: TestClient, service_env: dict[str, str], tmp_path: Path
) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"\0" * 16)
    reads = _torchscript_reading(tmp_path / "reads.pt", secret)
    problem = assert_refused(
        post(client, "/v1/models", "reads.pt", reads, input_shapes='{"x": [4]}'),
        422,
        "'aten::from_file'",
        "allow-list",
    )
    assert problem["type"].endswith("invalid_model")
    saves = _program_calling(tmp_path / "saves.pt2", "torch.ops.aten.save.default")
    assert_refused(post(client, "/v1/models", "saves.pt2", saves), 422, "'aten::save'")
    custom = _program_calling(tmp_path / "custom.pt2", "torch.ops.myops.run.default")
    assert_refused(post(client, "/v1/models", "custom.pt2", custom), 422, "'myops::run'")
    assert_nothing_registered(client, service_env)


# --- ONNX external data and operator domains ----------------------------------------------


def _external_onnx(tmp_path: Path, location: str) -> bytes:
    model = onnx.load(str(make_mlp(tmp_path / "m.onnx", in_features=4)))
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "1024")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def _zip(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("location", "reason"),
    [("../weights.bin", "'..'"), ("/etc/passwd", "absolute"), ("sub/../../x", "'..'")],
)
def test_external_data_outside_the_model_folder_is_refused(
    client: TestClient, service_env: dict[str, str], tmp_path: Path, location: str, reason: str
) -> None:
    upload = _zip(**{"model.onnx": _external_onnx(tmp_path, location), "weights.bin": b"\0" * 1024})
    assert_refused(post(client, "/v1/models", "m.zip", upload), 422, reason)
    assert_nothing_registered(client, service_env)


def test_lone_onnx_file_pointing_at_external_data_is_refused(
    client: TestClient, service_env: dict[str, str], tmp_path: Path
) -> None:
    # Files that sit next to the upload on the server (other uploads' temp files, the
    # database) must never be read as the model's weights.
    for location in ("modelpress.db", "../modelpress.db", "weights.bin"):
        upload = _external_onnx(tmp_path, location)
        assert_refused(post(client, "/v1/models", "m.onnx", upload), 422, "zip of the .onnx")
    assert_nothing_registered(client, service_env)


def test_zip_symlink_entry_is_refused_and_no_link_is_made(
    client: TestClient, service_env: dict[str, str], tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", _external_onnx(tmp_path, "weights.bin"))
        link = zipfile.ZipInfo("weights.bin")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    assert_refused(post(client, "/v1/models", "m.zip", buffer.getvalue()), 422, "symbolic link")
    assert_nothing_registered(client, service_env)


def test_tar_with_a_hardlink_is_not_accepted_and_nothing_is_extracted(
    client: TestClient, service_env: dict[str, str], tmp_path: Path
) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        model = _external_onnx(tmp_path, "weights.bin")
        info = tarfile.TarInfo("model.onnx")
        info.size = len(model)
        archive.addfile(info, io.BytesIO(model))
        hardlink = tarfile.TarInfo("weights.bin")
        hardlink.type = tarfile.LNKTYPE
        hardlink.linkname = "/etc/passwd"
        archive.addfile(hardlink)
    assert_refused(post(client, "/v1/models", "m.tar", buffer.getvalue()), 422, "not an ONNX")
    assert_nothing_registered(client, service_env)


def _custom_domain_model(tmp_path: Path, domain: str) -> bytes:
    node = helper.make_node("LoadMyLibrary", ["x"], ["y"], name="evil_node", domain=domain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(domain, 1)]
    )
    return model.SerializeToString()


@pytest.mark.parametrize("domain", ["com.example.customops", "ai.onnx.contrib"])
def test_operator_from_a_custom_domain_is_refused_naming_node_and_domain(
    client: TestClient, service_env: dict[str, str], tmp_path: Path, domain: str
) -> None:
    upload = _custom_domain_model(tmp_path, domain)
    assert_refused(post(client, "/v1/models", "m.onnx", upload), 422, "evil_node", f"'{domain}'")
    zipped = _zip(**{"m/model.onnx": upload})
    assert_refused(post(client, "/v1/models", "m.zip", zipped), 422, "evil_node", f"'{domain}'")
    assert_nothing_registered(client, service_env)


# --- zips ---------------------------------------------------------------------------------


def _zip_with_lying_size(tmp_path: Path) -> bytes:
    """A zip whose headers say the model is 100 bytes; it really holds the whole model."""
    model = make_mlp(tmp_path / "m.onnx").read_bytes()
    data = bytearray(_zip(**{"model.onnx": model}))
    real = len(model).to_bytes(4, "little")
    fake = (100).to_bytes(4, "little")
    assert data.count(real) == 2  # the local and the central header
    return bytes(data.replace(real, fake))


def _many_members(count: int, size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for index in range(count):
            archive.writestr(f"part{index}.bin", b"\0" * size)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("ratio-bomb", "zip bomb"),
        ("expands-past-limit", "expands to more than"),
        ("dot-dot-member", "'..'"),
        ("absolute-member", "absolute"),
        ("nul-in-member", "NUL"),
        ("lying-size-header", "corrupt"),
    ],
)
def test_hostile_zip_is_refused(
    client: TestClient, service_env: dict[str, str], tmp_path: Path, kind: str, reason: str
) -> None:
    model = make_mlp(tmp_path / "m.onnx").read_bytes()
    upload = {
        "ratio-bomb": lambda: _zip(**{"model.onnx": model, "w.bin": b"\0" * (3 << 20)}),
        # 25 members of 1 MiB - 1 (not held to the ratio) expand past 4x the upload limit.
        "expands-past-limit": lambda: _many_members(25, (1 << 20) - 1),
        "dot-dot-member": lambda: _zip(**{"model.onnx": model, "../../evil.bin": b"x"}),
        "absolute-member": lambda: _zip(**{"model.onnx": model, "/tmp/evil.bin": b"x"}),
        "nul-in-member": lambda: _zip(**{"model.onnx": model, "evilX.bin": b"x"}).replace(
            b"evilX.bin", b"evil\x00.bin"
        ),
        "lying-size-header": lambda: _zip_with_lying_size(tmp_path),
    }[kind]()
    assert len(upload) < LIMIT
    assert_refused(post(client, "/v1/models", "m.zip", upload), 422, reason)
    assert not Path("/tmp/evil.bin").exists()
    assert_nothing_registered(client, service_env)


def test_dataset_bomb_and_lying_array_header_are_refused(
    client: TestClient, service_env: dict[str, str]
) -> None:
    bomb = io.BytesIO()
    np.savez_compressed(bomb, x=np.zeros(((3 << 20) // 4, 1), np.float32))
    assert_refused(post(client, "/v1/datasets", "d.npz", bomb.getvalue()), 422, "zip bomb")

    # A header claiming 10^12 rows in a file of a few bytes: a reader would allocate for it.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 4)}
    )
    liar = io.BytesIO()
    with zipfile.ZipFile(liar, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + b"\0" * 16)
    assert_refused(
        post(client, "/v1/datasets", "d.npz", liar.getvalue()), 422, "declares shape", "truncated"
    )
    assert_nothing_registered(client, service_env)


# --- names, sizes, truncation -------------------------------------------------------------


def test_file_and_display_names_with_separators_or_nul_stay_names(
    client: TestClient, service_env: dict[str, str], tmp_path: Path
) -> None:
    model = make_mlp(tmp_path / "m.onnx").read_bytes()
    boundary = "b0undary"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="../../../etc/evil\x00.onnx"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + model
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = client.post(
        "/v1/models",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "evil.onnx"
    named = post(client, "/v1/models", "m.onnx", model, name="../..\\x/y\x00z")
    assert named.status_code == 201, named.text
    assert "/" not in named.json()["name"] and "\\" not in named.json()["name"]
    assert "\x00" not in named.json()["name"]
    data_dir = Path(service_env["MODELPRESS_DATA_DIR"])
    stored = sorted(p.relative_to(data_dir).parts[0] for p in data_dir.rglob("*") if p.is_file())
    assert set(stored) <= {"storage", "modelpress.db", "modelpress.db-wal", "modelpress.db-shm"}
    assert not (data_dir.parent / "etc").exists()
    for item in client.get("/v1/models").json()["items"]:
        download = client.get(f"/v1/models/{item['id']}/content")
        assert download.content == model


def test_upload_over_the_limit_is_413_and_truncated_upload_is_400(
    client: TestClient, service_env: dict[str, str]
) -> None:
    # No Content-Length: the size is only known from the bytes as they arrive.
    def chunks() -> Any:
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.onnx"\r\n\r\n'
        for _ in range(LIMIT // (1 << 20) + 2):
            yield b"\0" * (1 << 20)
        yield b"\r\n--b--\r\n"

    too_big = client.post(
        "/v1/models", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert_refused(too_big, 413, "MODELPRESS_MAX_UPLOAD_BYTES")

    truncated = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.onnx"\r\n\r\n'
    response = client.post(
        "/v1/models",
        content=truncated + b"\x08\x08",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert_refused(response, 400, "ended before the file was complete")
    assert_nothing_registered(client, service_env)


_PART = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.onnx"\r\n\r\n'


def _post_raw(client: TestClient, body: bytes, *, boundary: str = "b") -> Any:
    return client.post(
        "/v1/models",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        pytest.param(b"\x00\xff garbage \x13" * 500, 400, "malformed", id="garbage"),
        pytest.param(b"--b\r\nContent-Dispo", 400, "ended before", id="cut-in-a-header"),
        pytest.param(_PART + b"\x08\x08\r\n--b", 400, "ended before", id="no-final-boundary"),
        pytest.param(
            b"--b\r\nno colon here\r\n\r\nx\r\n--b--\r\n", 400, "malformed", id="bad-header"
        ),
        pytest.param(
            b"".join(
                b'--b\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i
                for i in range(5000)
            )
            + _PART
            + b"\x08\x08\r\n--b--\r\n",
            413,
            "parts",
            id="thousands-of-parts",
        ),
        pytest.param(
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="'
            + b"a" * (4 << 20)
            + b'"\r\n\r\nx\r\n--b--\r\n',
            413,
            "header",
            id="megabyte-part-header",
        ),
        pytest.param(
            b"--b\r\n"
            + b"X-Padding: 1\r\n" * 1000
            + b'Content-Disposition: form-data; name="file"\r\n\r\nx\r\n--b--\r\n',
            413,
            "header",
            id="thousands-of-headers",
        ),
    ],
)
def test_malformed_multipart_body_is_a_client_error_and_leaves_nothing(
    client: TestClient, service_env: dict[str, str], body: bytes, status: int, fragment: str
) -> None:
    problem = assert_refused(_post_raw(client, body), status, fragment)
    assert problem["status"] == status
    assert_nothing_registered(client, service_env)


def test_boundary_longer_than_the_standard_allows_is_400(
    client: TestClient, service_env: dict[str, str]
) -> None:
    boundary = "x" * 300
    body = f"--{boundary}\r\n".encode() + _PART[5:] + b"x\r\n" + f"--{boundary}--\r\n".encode()
    assert_refused(_post_raw(client, body, boundary=boundary), 400, "boundary")
    assert_nothing_registered(client, service_env)


@pytest.mark.parametrize(
    ("filename", "stored"),
    [
        ("../../.bashrc", "bashrc"),
        ("..", "model.onnx"),
        ("C:\\Windows\\system32\\evil.onnx", "evil.onnx"),
        ("a" * 1000 + ".onnx", "a" * 200),
        ("\u202eexe.onnx", "_exe.onnx"),
        ("tab\there\x7f.onnx", "tab_09here_.onnx"),  # httpx sends %09
    ],
)
def test_crafted_file_names_become_plain_display_names(
    client: TestClient, service_env: dict[str, str], tmp_path: Path, filename: str, stored: str
) -> None:
    model = make_mlp(tmp_path / "m.onnx").read_bytes()
    response = client.post("/v1/models", files={"file": (filename, model)})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == stored
    data_dir = Path(service_env["MODELPRESS_DATA_DIR"])
    assert [p for p in (data_dir / "tmp").rglob("*")] == []
    stored_files = [p for p in (data_dir / "storage").rglob("*") if p.is_file()]
    assert [p.name for p in stored_files] == ["model.onnx"]


# --- job specs ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"benchmark": {"iterations": 10**12}}, "iterations"),
        ({"benchmark": {"batch_sizes": [10**9]}}, "batch_sizes"),
        ({"benchmark": {"iterations": 100_000, "batch_sizes": [4096]}}, "iterations"),
        ({"benchmark": {"input_shapes": {"x": [1, 1_000_000, 1_000_000]}}}, "input_shapes"),
        ({"passes": [{"kind": "quantize", "method": "int4_weight_only", "block_size": 2**40}]},
         "block_size"),
        ({"passes": [{"kind": "prune", "method": "magnitude", "sparsity": 1e308}]}, "sparsity"),
        ({"passes": [{"kind": "prune", "method": "structured",
                      "finetune": {"dataset_id": "d", "epochs": 10**9}}]}, "epochs"),
        ({"passes": [{"kind": "prune", "method": "structured",
                      "finetune": {"dataset_id": "d", "batch_size": 10**9}}]}, "batch_size"),
        ({"passes": [{"kind": "quantize", "method": "static",
                      "calibration": {"dataset_id": "d", "samples": 10**15}}]}, "samples"),
        ({"evaluate": {"dataset_id": "d", "samples": 10**15}}, "samples"),
        ({"passes": [{"kind": "quantize", "method": "dynamic"}] * 17}, "passes"),
    ],
)  # fmt: skip
def test_spec_with_huge_numbers_is_422_naming_the_field(
    client: TestClient, tmp_path: Path, patch: dict[str, Any], field: str
) -> None:
    model = upload_model(client, make_mlp(tmp_path / "m.onnx"))
    spec = {"model_id": model["id"], "passes": [{"kind": "quantize", "method": "dynamic"}]}
    response = client.post("/v1/jobs", json={**spec, **patch})
    problem = assert_refused(response, 422, field)
    assert any(field in json.dumps(error) for error in problem["errors"])
    assert client.get("/v1/jobs").json()["items"] == []


def test_spec_with_a_number_too_long_to_parse_is_422(client: TestClient, tmp_path: Path) -> None:
    model = upload_model(client, make_mlp(tmp_path / "m.onnx"))
    body = (
        f'{{"model_id": "{model["id"]}", "passes": [{{"kind": "quantize", "method": "dynamic"}}], '
        f'"benchmark": {{"iterations": {"9" * 50_000}}}}}'
    )
    response = client.post("/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert client.get("/v1/jobs").json()["items"] == []
