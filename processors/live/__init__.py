"""taskstream.processors.live: the live Faust replica (batched fold, dispatch, timers, metrics)."""
