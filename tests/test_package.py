"""``import efficientdet`` is light (no PyTorch) and still exposes the API and its submodules."""

from __future__ import annotations

import json
import subprocess
import sys


def _run(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_is_torch_free_and_names_load_on_use():
    result = _run(
        "import json, sys\n"
        "import efficientdet\n"
        "light = 'torch' not in sys.modules\n"
        "names = sorted(n for n in efficientdet.__all__ if getattr(efficientdet, n) is None)\n"
        "nested = efficientdet.model.efficientdet.flatten_outputs.__name__\n"
        "print(json.dumps({'light': light, 'missing': names, 'nested': nested,\n"
        "                  'version': efficientdet.__version__, 'torch_now': 'torch' in sys.modules}))\n"
    )
    assert result == {"light": True, "missing": [], "nested": "flatten_outputs", "version": "0.1.0",
                      "torch_now": True}


def test_unknown_attribute_is_an_attribute_error():
    result = _run(
        "import json, efficientdet\n"
        "try:\n    efficientdet.no_such_name\n    r = 'no error'\n"
        "except AttributeError as e:\n    r = str(e)\n"
        "print(json.dumps({'r': r}))\n"
    )
    assert "no_such_name" in result["r"]
