"""Task packages. Importing this module registers every task found under it.

Each sub-package ``neurotrain.tasks.<name>`` registers itself from its ``task.py``;
new tasks need no edit here. A package without ``task.py`` is not a task.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if _info.ispkg and not _info.name.startswith("_"):
        _name = f"{__name__}.{_info.name}.task"
        if importlib.util.find_spec(_name) is not None:
            importlib.import_module(_name)
