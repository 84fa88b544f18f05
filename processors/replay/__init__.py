"""taskstream.processors.replay: audit replay of the events topic.

Read, rebuild, verify, history, export and the quarantine log; the fold is
:mod:`taskstream.processors.fold`, the same code the live replica runs.
"""
