"""taskstream.workers — see DESIGN.md."""
