"""What a bench result file says about the run that made it: when, the command that
reproduces it, the machine and its load at the end (this machine is shared: a
figure is read beside the load it was taken under)."""

from __future__ import annotations

import os
import platform
import sys
import time
from typing import Any


def run_meta(script: str) -> dict[str, Any]:
    """The ``meta`` of a result written now by ``bench/<script>`` run with this
    process's arguments."""
    return {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join(["python", f"bench/{script}", *sys.argv[1:]]),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()]}
