"""`{{variable}}` placeholders in prompts and first messages."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# {{name}}, {{ name }}, {{hubspot.firstname}}
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.\-]*)\s*\}\}")


def placeholders(template: str | None) -> list[str]:
    if not template:
        return []
    return list(dict.fromkeys(m.group(1) for m in PLACEHOLDER.finditer(template)))


def missing_variables(templates: list[str | None], variables: dict[str, str]) -> list[str]:
    names: dict[str, None] = {}
    for template in templates:
        for name in placeholders(template):
            if name not in variables:
                names[name] = None
    return list(names)


def render(template: str | None, variables: dict[str, str]) -> str | None:
    """Substitute every placeholder; callers check `missing_variables` first."""
    if template is None:
        return None
    return PLACEHOLDER.sub(lambda m: variables.get(m.group(1), m.group(0)), template)


def render_lenient(template: str | None, variables: Mapping[str, Any]) -> str | None:
    """Fill what is known; a placeholder nobody can fill on an inbound call becomes empty."""
    if template is None:
        return None
    return PLACEHOLDER.sub(lambda m: str(variables.get(m.group(1), "")), template)
