"""``python -m headwater``: the ``headwater`` command."""

from headwater._entry import main

raise SystemExit(main())
