"""``python -m idmzoo``: the same command line as the ``idmzoo`` console script."""

from .cli import main

raise SystemExit(main())
