"""The project's own transformers model code (``trust_remote_code``), shipped with the package and
copied unchanged into FLM-shaped exports (``flm export-hf --architecture flm``, and every variant no
standard architecture computes, e.g. xPos): ``configuration_flm.py`` and ``modeling_flm.py``.

The two files import nothing from this project (transformers loads them from the export directory
on machines without it); :data:`FILES` names them for the exporter, and
:func:`training.hf.flm_arch.is_project_code` checks a directory holds exactly these files before
this project loads it with ``trust_remote_code``.
"""

from __future__ import annotations

from pathlib import Path

DIR = Path(__file__).parent
FILES = ("configuration_flm.py", "modeling_flm.py")
