"""taskstream.dev: ``taskstream dev``, its child processes and its demo workload."""
