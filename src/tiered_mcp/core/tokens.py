"""Token counts with tiktoken's o200k_base, offline.

tiktoken downloads its tables on first use, which these machines (and many users' networks) cannot do, so the
o200k_base table ships inside the package (data/o200k_base.tiktoken.gz, from OpenAI's tiktoken, MIT) and is checked
against the hash tiktoken itself expects. It loads once, lazily (about 0.3 s).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from importlib import resources
from typing import Any

# The hash tiktoken's own o200k_base loader checks the downloaded table against.
_O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# tiktoken_ext.openai_public.o200k_base's pattern, which tiktoken offers only bundled with the download.
_O200K_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
_lock = threading.Lock()
_encoding: Any = None


def encoding() -> Any:
    """The o200k_base `tiktoken.Encoding`, built once from the packaged table."""
    global _encoding
    with _lock:
        if _encoding is None:
            import tiktoken

            raw = gzip.decompress((resources.files("tiered_mcp") / "data" / "o200k_base.tiktoken.gz").read_bytes())
            if hashlib.sha256(raw).hexdigest() != _O200K_SHA256:
                raise RuntimeError("the packaged o200k_base table is corrupt; reinstall tiered-mcp")
            ranks = {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in raw.splitlines() if line)}
            _encoding = tiktoken.Encoding(
                name="o200k_base", pat_str=_O200K_PATTERN, mergeable_ranks=ranks,
                special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
            )
    return _encoding


def count(text: str) -> int:
    """Tokens in `text` (special-token text is counted as ordinary text)."""
    return len(encoding().encode(text, disallowed_special=()))


def count_messages(messages: list[dict[str, str]]) -> int:
    """Tokens of a chat prompt: the contents plus OpenAI's few tokens of framing per message."""
    return sum(count(m["content"]) + 4 for m in messages) + 3
