"""taskstream.schemas — see DESIGN.md."""
