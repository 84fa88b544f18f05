"""The fault-injection harness: ``taskstream chaos`` and ``make chaos`` (D42, docs/chaos.md)."""
