"""taskstream.statestore — see DESIGN.md."""
