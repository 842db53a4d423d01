"""Hypothesis profiles: reproducible by default, random on request.

``ci`` (the default) derandomizes and keeps no example database, so every run tries the
same examples and a failure reproduces anywhere.  ``HYPOTHESIS_PROFILE=explore`` draws
fresh examples each run (and remembers failures locally) to hunt for new bugs.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
