"""taskstream.runners: process entry points that start a part together with what it serves."""
