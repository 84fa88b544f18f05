"""taskstream.producer — see DESIGN.md."""
