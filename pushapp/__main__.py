"""``python -m pushapp COMMAND``: the ``pushapp`` command where it is not installed, as in
a checkout (``.venv/bin/python -m pushapp check-config``)."""
import sys

from .cli import main

sys.exit(main())
