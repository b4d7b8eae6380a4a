"""The client installs and imports without the service: no torch, onnxruntime or service
packages, so it runs on a laptop or a CI runner."""

from __future__ import annotations

import os
import subprocess
import sys


def test_importing_the_client_loads_no_service_code_nor_torch() -> None:
    code = (
        "import sys, modelpress, modelpress.cli; "
        "heavy = {'torch', 'onnxruntime', 'onnx', 'numpy', 'api', 'core', 'worker', "
        "'optimizers'} & {m.split('.')[0] for m in sys.modules}; print(sorted(heavy))"
    )
    # Run from outside the repository, as on a laptop with only the client installed.
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd="/",
        env={"PATH": os.environ["PATH"]},
        check=True,
    )
    assert result.stdout.strip() == "[]", result.stdout
