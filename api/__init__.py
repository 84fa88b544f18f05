"""taskstream.api: the HTTP query/admin API served by every processor replica (DESIGN.md)."""
