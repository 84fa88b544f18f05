"""Example task modules for the README, the docs and ``taskstream dev``."""
