"""``python -m smdyn`` is the ``smdyn`` command."""

from smdyn.cli import main

raise SystemExit(main())
