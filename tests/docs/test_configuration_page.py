"""docs/configuration.md lists every setting of Config, with its real default and variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from omnitask.config import ENV_PREFIX, Config

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _rows() -> dict[str, list[str]]:
    rows = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[0].endswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


@pytest.mark.parametrize("name", Config.__struct_fields__)
def test_setting_is_documented(name: str) -> None:
    rows = _rows()
    assert name in rows, f"configuration.md has no row for the setting {name}"
    _, default, variable, effect = rows[name]
    assert variable == f"`{ENV_PREFIX}{name.upper()}`"
    value = getattr(Config(), name)
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    assert default.split(" ")[0] == f"`{shown}`", f"{name}: the page says {default}"
    assert effect, f"{name}: no effect described"
