"""Allow ``python -m ifval``, the same as the ``ifval`` command."""

from ifval.cli import main

main()
