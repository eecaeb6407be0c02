"""`${VAR}` and `${VAR:-default}` in command, args, cwd, env, url and headers.

The forms are Claude Code's; `${env:VAR}` (Cursor, VS Code) is accepted too, and VS Code's `${input:id}` is an
error that says what to do instead. `${VAR:-default}` uses the default when VAR is unset or empty, as the shell
does; `$${` stands for a literal `${`. Anything else with a `$` is left as it is, so a shell snippet in `args`
survives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from circuitbox.config.model import ConfigError

_REFERENCE = re.compile(r"\$\$\{|\$\{(?:env:)?([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{input:([^}]*)\}")


def expand(value: str, env: Mapping[str, str], path: str, used: list[str] | None = None) -> str:
    """`value` with every reference replaced; each value taken from `env` is also appended to `used` (they are
    secrets wherever they end up: see config/secrets.py).

    Raises:
        ConfigError: a variable is unset and has no default (the message names it and `path`).
    """

    def replace(match: re.Match[str]) -> str:
        name, default, prompt = match.group(1), match.group(2), match.group(3)
        if prompt is not None:
            raise ConfigError(
                f"{path}: ${{input:{prompt}}} asks VS Code to prompt for a value, which circuitbox cannot do; "
                "use ${VAR} and set the environment variable"
            )
        if name is None:
            return "${"
        found = env.get(name)
        if found:
            if used is not None:
                used.append(found)
            return found
        if default is not None:
            return default
        if found is not None:
            return found  # set but empty, no default: empty is what the user asked for
        raise ConfigError(f"{path}: environment variable {name} is not set (write ${{{name}:-default}} for a default)")

    return _REFERENCE.sub(replace, value)
