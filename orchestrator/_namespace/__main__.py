"""``python -m metasweep``: the same command line as the ``metasweep`` script.

``metasweep`` is a namespace package of two portions, ``metasweep.algorithms`` (the folder
``algorithms/``) and ``metasweep.orchestrator`` (``orchestrator/``); this folder holds its only
module of its own.
"""

from __future__ import annotations

from metasweep.orchestrator.cli import entry

if __name__ == "__main__":
    entry()
