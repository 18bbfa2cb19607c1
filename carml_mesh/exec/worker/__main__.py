"""Entry point: ``python -m carml_mesh.exec.worker --connect SOCKET --framework F --device D``."""

from .main import main

raise SystemExit(main())
