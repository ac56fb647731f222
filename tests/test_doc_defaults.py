"""Every default the docs name for a setting is the code's default: in the README's and
the docs' tables (a "Default" or "default" column) and in prose written as
``VARIABLE`` (value), as in "`PUSH_DELAY` (120 s)"."""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from pushapp.config import Config
from support import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIELDS = {field.metadata["env"]: field for field in dataclasses.fields(Config)}
_UNITS = {"": 1, "s": 1, "second": 1, "seconds": 1, "minutes": 60, "hours": 3600,
          "day": 86400, "days": 86400, "KiB": 1024, "MiB": 1024 ** 2, "KB": 1000,
          "MB": 1000 ** 2}
_QUANTITY = re.compile(r"^(\d[\d,]*(?:\.\d+)?)\s*(" + "|".join(filter(None, _UNITS)) + r")?$")
_PROSE = re.compile(r"`([A-Z][A-Z0-9_]+)` \(([^()]+)\)")
# Defaults that depend on other settings, written as words.
_IN_WORDS = {("JWT_ALGORITHMS", "by key")}


def _documented() -> list[tuple[str, str, str]]:
    """(where, variable, documented default) for every default the docs name."""
    found = []
    for path in DOCS:
        column = None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            where = f"{path.name}:{number}"
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not line.startswith("|"):
                column = None
                found += [(where, name, value) for name, value in _PROSE.findall(line)
                          if name in FIELDS and _QUANTITY.match(value.strip())]
                continue
            lowered = [cell.lower() for cell in cells]
            if "default" in lowered:
                column = lowered.index("default")
                continue
            names = [cell.strip("`") for cell in cells[:column]
                     if re.fullmatch(r"`[A-Z][A-Z0-9_]*`", cell)]
            if column is not None and len(names) == 1 and names[0] in FIELDS \
                    and column < len(cells):
                found.append((where, names[0], cells[column]))
    return found


def _matches(documented: str, default: Any) -> bool:
    text = documented.strip().strip("`").strip()
    if text == "unset":
        return default in ("", (), None)
    quantity = _QUANTITY.match(text)
    if quantity and isinstance(default, (int, float)):
        return float(quantity[1].replace(",", "")) * _UNITS[quantity[2] or ""] == default
    if isinstance(default, tuple):
        return text == ",".join(default)
    return text == str(default)


def test_the_defaults_the_docs_name_are_the_codes():
    documented = _documented()
    # Every setting has its row in the README; the docs name many again.
    assert len({name for _, name, _ in documented}) == len(FIELDS)
    wrong = [f"{where}: {name} documented as {value!r}, the code says "
             f"{FIELDS[name].default!r}" for where, name, value in documented
             if (name, value) not in _IN_WORDS and not _matches(value, FIELDS[name].default)]
    assert not wrong, "\n".join(wrong)
