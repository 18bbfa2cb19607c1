"""``python -m carml_mesh.node`` is ``carml-node``."""

from .cli import main

raise SystemExit(main())
