"""The one place HTML pages are rendered: the Jinja2 templates in genad/report/templates/,
autoescaped, so every text a user, a data set or a model wrote is escaped by the template
engine (a template marks nothing safe by hand).

    page = render("detect_index.html.j2", title="genad detect", rows=rows, ...)
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from jinja2 import Environment


@cache
def environment() -> Environment:
    """Built once, on first use. StrictUndefined: a name a template uses but the page did not
    give is an error, not an empty string."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    return Environment(
        loader=PackageLoader("genad.report"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def render(template: str, **context: Any) -> str:
    """Render templates/`template` with `context`."""
    return environment().get_template(template).render(**context)
