"""``python -m taskstream`` is the ``taskstream`` command."""

from taskstream.cli.main import main

main()
