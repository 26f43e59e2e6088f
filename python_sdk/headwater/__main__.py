"""``python -m headwater``: the ``headwater`` command."""

from headwater._cli import main

raise SystemExit(main())
