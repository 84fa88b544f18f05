"""A normal (non-editable) install holds the same taskstream.* tree as the source mapping.

The editable install's import hook hides the tree from mypy, so CI type-checks a
normal install made by the same script; this test keeps that script honest.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_normal_install_has_the_source_tree(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "package_tree.py"), str(tmp_path / "site")],
        capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "installed tree matches the source mapping" in result.stdout
    installed = tmp_path / "site" / "taskstream"
    assert (installed / "schemas" / "avro" / "v1" / "io.taskstream.Envelope.avsc").is_file()
    assert (installed / "py.typed").is_file()
    assert not (tmp_path / "site" / "schemas").exists(), "root folders must not install bare"
