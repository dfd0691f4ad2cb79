"""Editing a user's config file in place: set `[tools.X] tier = "..."` and keep everything else, comments too.

TOML has no writer in the standard library, and a rewrite from parsed data would lose the user's comments and
order; so the edit is made on the text, then the result is parsed and validated before anything is written.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tiered_mcp.core.config import config_from_dict
from tiered_mcp.core.errors import ConfigError

_HEADER = re.compile(r"^\s*\[([^\[\]]+)\]\s*(#.*)?$")
_TIER = re.compile(r"^\s*tier\s*=")


def _table_name(line: str) -> str | None:
    m = _HEADER.match(line)
    return m.group(1).strip().replace('"', "").replace(" ", "") if m else None


def set_tool_tiers(text: str, tiers: dict[str, str], note: str) -> str:
    """`text` with `tier = "..."` set in each `[tools.NAME]` table (added where missing); the rest unchanged.

    Raises:
        ConfigError: the file sets tools in a shape this edit cannot safely change (an inline `tools = {...}` or
            dotted `tools.NAME.tier = ...` keys), or the result is not a valid config.
    """
    try:
        before = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"the file is not valid TOML ({e}); fix it or pass --force to replace it") from None
    lines = text.splitlines()
    for tool, tier in sorted(tiers.items()):
        header = f"tools.{tool}"
        start = next((i for i, ln in enumerate(lines) if _table_name(ln) == header), None)
        if start is None:
            if tool in (before.get("tools") or {}):
                raise ConfigError(f"the file sets tools.{tool} outside a [tools.{tool}] table; edit it by hand "
                                  "or pass --force to replace the file")
            if lines and lines[-1].strip():
                lines.append("")
            lines += [f"# {note}", f"[{header}]", f'tier = "{tier}"']
            continue
        end = next((i for i in range(start + 1, len(lines)) if _table_name(lines[i]) or lines[i].lstrip().startswith("[[")),
                   len(lines))
        at = next((i for i in range(start + 1, end) if _TIER.match(lines[i])), None)
        if at is None:
            lines.insert(start + 1, f'tier = "{tier}"  # {note}')
        else:
            lines[at] = f'tier = "{tier}"  # {note}'
    out = "\n".join(lines) + "\n"
    try:
        after = tomllib.loads(out)
        config_from_dict(after)
    except (tomllib.TOMLDecodeError, ConfigError) as e:
        raise ConfigError(f"merging would make the file invalid ({e}); edit it by hand or pass --force") from None
    for tool, tier in tiers.items():
        if (after.get("tools") or {}).get(tool, {}).get("tier") != tier:
            raise ConfigError(f"could not set tools.{tool}.tier safely; edit it by hand or pass --force")
    return out


def write_tool_tiers(path: Path, tiers: dict[str, str], snippet: str, note: str, force: bool = False) -> str:
    """Write the chosen tiers into `path`: a new file gets `snippet`; an existing one is merged into (or, with
    `force`, replaced). Returns what was done, for the user.

    Raises:
        ConfigError: the merge is not safe (see `set_tool_tiers`); nothing is written.
    """
    if force or not path.exists():
        existed = path.exists()
        path.write_text(snippet, encoding="utf-8")
        return f"{'replaced' if existed else 'wrote'} {path}"
    text = path.read_text(encoding="utf-8")
    merged = set_tool_tiers(text, tiers, note)
    if merged == text:
        return f"{path} already says this; unchanged"
    path.write_text(merged, encoding="utf-8")
    changed = ", ".join(f"{t} = {v}" for t, v in sorted(tiers.items())) or "nothing"
    return f"updated {path} (tier of {changed}; everything else kept)"
