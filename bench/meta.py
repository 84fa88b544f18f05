"""What a bench result file says about the run that made it: when, the command that
reproduces it, the machine and its load at the end (this machine is shared: a
figure is read beside the load it was taken under)."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def run_meta(script: str) -> dict[str, Any]:
    """The ``meta`` of a result written now by ``bench/<script>`` run with this
    process's arguments."""
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["python", f"bench/{script}", *sys.argv[1:]]),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}


def write_result(result: dict[str, Any], script: str, out: Path, **meta: Any) -> Path:
    """Stamp ``result`` with :func:`run_meta` (and ``meta``) and write it to ``out`` as
    indented JSON, making its folder; returns ``out``."""
    result["meta"] = {**run_meta(script), **meta}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out
