"""Errors of keys, signatures and sealed values, under :class:`TaskstreamError`."""

from __future__ import annotations

from taskstream.errors import ConfigError, TaskstreamError


class KeyringError(ConfigError):
    """A keyring is malformed or lacks a key it must have. The message names the setting."""


class SealError(TaskstreamError):
    """A sealed value cannot be opened: no key with its ID, or it was altered or moved to
    another entity (its associated data does not match)."""
