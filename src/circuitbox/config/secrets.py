"""What in a server's config is secret, and masking it in any text: error messages, log lines, status answers.

Secret: every `env` and `headers` value, every value a `${VAR}` reference brought in from the environment (into a
command, an argument, a URL, anywhere), a URL's user and password, and its query values. Besides those known
values, any URL's credentials and any query parameter named like a token (`token`, `key`, `secret`, `password`,
`auth`, `sig`, ...) are masked wherever they appear, so a URL the SDK or the HTTP client logs at DEBUG never shows one.
Values shorter than `MIN_LENGTH` are left alone: masking "1" or "eu" everywhere would hide more than it protects.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from urllib.parse import parse_qsl, unquote, urlsplit

MIN_LENGTH = 4
MASK = "***"

_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@")
_SECRET_PARAM = re.compile(
    r"(?i)([?&;][^=&#\s'\"]*(?:token|key|secret|passw(?:or)?d|pwd|auth|sig|credential|session)[^=&#\s'\"]*=)"
    r"[^&#\s'\"]+"
)


def secrets_of(
    env: Mapping[str, str], headers: Mapping[str, str], url: str | None, expanded: Iterable[str] = ()
) -> frozenset[str]:
    """The values of one server's config that must never be shown."""
    found = {*env.values(), *expanded}
    for value in headers.values():
        found.add(value)
        words = value.split()
        found.update(words[1:])  # "Bearer <token>": the token alone too (not the scheme)
    if url:
        parts = urlsplit(url)
        found.update(p for p in (parts.username, parts.password) if p)
        found.update(unquote(p) for p in (parts.username, parts.password) if p)
        found.update(v for _, v in parse_qsl(parts.query))
    return frozenset(s for s in found if len(s.strip()) >= MIN_LENGTH)


def _forms(secret: str) -> set[str]:
    """How a value can appear in a message: as it is, trimmed, as a bytes repr (an illegal header), JSON-escaped."""
    forms = {secret, secret.strip(), repr(secret.encode())[2:-1], json.dumps(secret)[1:-1]}
    return {f for f in forms if len(f) >= MIN_LENGTH}


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every known secret and every URL credential or token-like query value replaced by ***."""
    text = _USERINFO.sub(rf"\1{MASK}@", text)
    text = _SECRET_PARAM.sub(rf"\1{MASK}", text)
    for form in sorted({f for s in secrets for f in _forms(s)}, key=len, reverse=True):  # longest first
        text = text.replace(form, MASK)
    return text


class MaskingFormatter(logging.Formatter):
    """Wraps a handler's formatter and masks the finished line (message, exception, JSON fields alike)."""

    def __init__(self, inner: logging.Formatter, secrets: set[str]) -> None:
        super().__init__()
        self.inner = inner
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return mask(self.inner.format(record), self.secrets)


def mask_logs(secrets: Iterable[str] = ()) -> set[str]:
    """Mask the output of every handler on the root logger; returns the set of secrets they mask, to which a reload
    adds its own (the old ones stay: their values may still be in flight)."""
    handlers = logging.getLogger().handlers
    known = next((h.formatter.secrets for h in handlers if isinstance(h.formatter, MaskingFormatter)), set())
    for handler in handlers:
        if not isinstance(handler.formatter, MaskingFormatter):
            handler.setFormatter(MaskingFormatter(handler.formatter or logging.Formatter(), known))
    known.update(secrets)
    return known
