"""taskstream.processors — see DESIGN.md."""
