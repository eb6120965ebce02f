"""Shared test set-up. The fixture builders live in two helper modules next to this file
(importable from every test folder because this conftest puts ``tests/`` on ``sys.path``):

* ``mri_fixtures``: tiny MRI phantoms written in the real layouts (PI-CAI, ProstateX, generic);
* ``fl_fixtures``: a tiny crop cache through the real cache writer and a tiny run configuration.

Tests mirror the package: ``tests/<package>/test_<module>.py``.
"""

import os

os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
