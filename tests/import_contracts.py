"""A custom import-linter contract: only some of metasweep's modules may import a sub-module of an
outside package (Ray Tune, within Ray).

import-linter sees outside packages whole (``ray``, not ``ray.tune``), so this contract reads the
import statements grimp records. Loaded by ``lint-imports`` from ``[tool.importlinter]`` in
pyproject.toml (``contract_types``); lint-imports runs in the repository root, where ``tests`` is
importable.
"""

from __future__ import annotations

import re

from importlinter import Contract, ContractCheck, fields, output


class ExternalSubmodulesContract(Contract):
    """Only ``allowed_importers`` (and their descendants) import any of ``submodules``.

    Configuration:
        submodules: dotted names inside outside packages, e.g. ``ray.tune``.
        allowed_importers: the metasweep packages that may import them.
    """

    type_name = "external_submodules"

    submodules = fields.ListField(subfield=fields.StringField())
    allowed_importers = fields.ListField(subfield=fields.StringField())

    def check(self, graph, verbose: bool) -> ContractCheck:  # type: ignore[no-untyped-def]
        allowed = [str(a) for a in self.allowed_importers]  # type: ignore[attr-defined]
        names = [str(s) for s in self.submodules]  # type: ignore[attr-defined]
        pattern = re.compile("|".join(_spellings(n) for n in names))
        broken = []
        for top in {n.split(".")[0] for n in names}:
            if top not in graph.modules:
                continue
            for importer in sorted(graph.find_modules_that_directly_import(top)):
                if any(importer == a or importer.startswith(a + ".") for a in allowed):
                    continue
                for detail in graph.get_import_details(importer=importer, imported=top):
                    if pattern.search(detail["line_contents"]):
                        broken.append(f"{importer} (l.{detail['line_number']}): {detail['line_contents']}")
        return ContractCheck(kept=not broken, metadata={"broken": broken})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for line in check.metadata["broken"]:
            output.print_error(line)


def _spellings(name: str) -> str:
    """A regex for the ways a statement imports ``a.b``: ``import a.b``, ``from a.b import x``,
    ``from a import b``."""
    parent, _, child = name.rpartition(".")
    return rf"\b{re.escape(name)}\b|\bfrom\s+{re.escape(parent)}\s+import\b.*\b{re.escape(child)}\b"
