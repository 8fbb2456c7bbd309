"""The one user-error type. Its message names the parameters the user may change with :func:`option`;
``str()`` shows them as the library's parameter names, a front end as its own spelling (the CLI: its
options, ``--force``) with :meth:`EdgefpError.render`."""

from __future__ import annotations

import re

_OPTION = re.compile("\0([a-z_]+)\0")  # NUL never occurs in a path, an argument or a data spec


def option(name: str) -> str:
    """A parameter's name, marked in a message so that each front end can spell it its own way."""
    return f"\0{name}\0"


class EdgefpError(Exception):
    """A problem with the user's input or environment, worded as what is wrong and what to do."""

    def render(self, spell) -> str:
        """The message with each :func:`option` spelled by ``spell(name)``."""
        return _OPTION.sub(lambda found: spell(found.group(1)), super().__str__())

    def __str__(self) -> str:
        return self.render(lambda name: f"`{name}`")
