"""The public facade: cheap to import, and every advertised name resolves."""

from __future__ import annotations

import subprocess
import sys

import pytest

import taskstream


def test_every_advertised_name_resolves() -> None:
    for name in taskstream.__all__:
        assert getattr(taskstream, name) is not None


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = taskstream.nope  # type: ignore[attr-defined]


def test_import_does_not_pull_in_faust() -> None:
    code = "import sys, taskstream, taskstream.cli.main; print('faust' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
