"""taskstream.processors.fold: the pure fold, ``apply(state, event) -> (state, effects)``.

No I/O: the live replica (:mod:`taskstream.processors.live`) and audit replay
(:mod:`taskstream.processors.replay`) run the same code, so replay is the live
tables' oracle (DESIGN.md, "Events and the lifecycle").
"""
