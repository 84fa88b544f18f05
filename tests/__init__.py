"""taskstream tests (a package, so tests share helpers as tests.harness)."""
