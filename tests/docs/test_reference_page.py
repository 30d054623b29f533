"""docs/reference.md renders every public name (mkdocstrings directives, checked here)."""

from __future__ import annotations

from pathlib import Path

import omnitask
import omnitask.errors
import omnitask.testing

PAGE = Path(__file__).resolve().parents[2] / "docs" / "reference.md"


def test_every_public_name_is_rendered() -> None:
    text = PAGE.read_text(encoding="utf-8")
    rendered_modules = {"omnitask.errors"} & {
        line.removeprefix("::: ").strip() for line in text.splitlines() if line.startswith(":::")
    }
    assert rendered_modules, "the errors module is no longer rendered as a whole"
    missing = [
        name
        for name in omnitask.__all__
        if name != "__version__"
        and f"::: omnitask.{name}\n" not in text
        and name not in omnitask.errors.__all__
    ]
    missing += [n for n in omnitask.testing.__all__ if f"::: omnitask.testing.{n}\n" not in text]
    assert not missing, f"reference.md does not render: {', '.join(missing)}"
