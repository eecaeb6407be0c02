"""Environment profiles, service presets and preset inference (README, "Policies").

A policy is built in layers, lowest first: the engine's built-in defaults, the environment profile, the service
preset, then whatever the caller overrides. This module owns the first three; the proxy adds its file layers on top.

The preset rule: each preset has a failure-threshold range. Production gets the low end, testing the high end,
staging one third and development two thirds of the way up, rounded half up (`floor(x + 1/2)`, computed with exact
fractions so no float error can move a value across a boundary).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from circuitbox.breakers._config import CircuitBreakerConfig

ENVIRONMENTS: Mapping[str, Mapping[str, Any]] = {
    "development": {"failure_threshold": 10, "timeout": 180.0, "failure_rate_threshold": 0.7},
    "staging": {"failure_threshold": 5, "timeout": 90.0, "failure_rate_threshold": 0.5},
    "production": {"failure_threshold": 3, "timeout": 60.0, "failure_rate_threshold": 0.4},
    "testing": {"failure_threshold": 20, "timeout": 300.0, "failure_rate_threshold": 0.9},
}
"""The seed's table: failure_threshold / timeout / failure_rate_threshold per environment."""

DEFAULT_ENVIRONMENT = "production"

# How far up its range a preset's failure threshold sits in each environment.
_POSITION = {
    "production": Fraction(0),
    "staging": Fraction(1, 3),
    "development": Fraction(2, 3),
    "testing": Fraction(1),
}


@dataclass(frozen=True)
class Preset:
    """A service preset: a failure-threshold range plus the deadlines the service's nature calls for."""

    name: str
    low: int
    high: int
    doc: str
    tuning: Mapping[str, Any] = field(default_factory=dict)
    keywords: tuple[str, ...] = ()
    """Words (a hyphen joins the words of a phrase) that identify the service in a name, command, args or URL."""
    distress: tuple[str, ...] = ()
    """Regexes (case-insensitive) of `isError` texts by which this service reports its own distress, on top of
    `DISTRESS_PATTERNS`."""

    def failure_threshold(self, environment: str) -> int:
        exact = self.low + (self.high - self.low) * _POSITION[check_environment(environment)]
        return int(exact + Fraction(1, 2))  # round half up; exact is never negative, so int() floors

    def values(self, environment: str) -> dict[str, Any]:
        return {"failure_threshold": self.failure_threshold(environment), **self.tuning}


# fmt: off
_TABLE: tuple[tuple[str, int, int, float, float, str, str], ...] = (
    # name, failure-threshold range, call_timeout, slow_call_duration, inference keywords, why
    ("claude", 2, 5, 60, 30, "claude anthropic",
     "Anthropic's API: a paid, reliable chat API, so trip early; a long answer may take a minute to generate."),
    ("openai", 2, 5, 60, 30, "openai gpt chatgpt",
     "OpenAI's API (alias gpt-4): like claude, trip early to save cost; a minute per generation."),
    ("gemini", 3, 8, 60, 30, "gemini",
     "Google Gemini: experimental models fail more often, so more failures are tolerated."),
    ("deepseek", 2, 5, 120, 60, "deepseek",
     "DeepSeek: reasoning models think before answering, so calls get two minutes before they time out."),
    ("groq", 2, 3, 15, 5, "groq",
     "Groq: fast inference is the point of the service, so a slow call is already a failure sign (15 s)."),
    ("ollama", 15, 50, 300, 120, "ollama",
     "Ollama: a local model is slow (loading weights, CPU inference) and free, so many failures are tolerated "
     "and calls get five minutes; two minutes counts as slow."),
    ("docker", 3, 8, 120, 60, "docker",
     "Docker: image pulls and builds take minutes, so calls get two minutes."),
    ("kubernetes", 3, 10, 60, 30, "kubernetes kubectl k8s kube",
     "Kubernetes: cluster operations wait on the API server and on rollouts; a minute per call."),
    ("desktop-commander", 5, 30, 120, 60, "desktop-commander desktopcommander",
     "Desktop Commander: shell commands fail for ordinary reasons (a bad path, a non-zero exit) that say "
     "nothing about the server's health, so many failures are tolerated; commands may run two minutes."),
    ("prometheus", 2, 5, 15, 5, "prometheus promql",
     "Prometheus: queries answer in milliseconds when healthy, so 15 s is generous and 5 s is slow."),
    ("slack", 3, 8, 15, 5, "slack",
     "Slack: a chat API that answers fast (15 s deadline) but rate-limits, so a few failures are tolerated."),
    ("s3", 2, 5, 60, 30, "s3 minio",
     "S3 / MinIO: storage should not fail; large objects take time, so a minute per call."),
    ("security-scanner", 3, 10, 600, 300,
     "security-scanner security-scan semgrep trivy bandit snyk grype gitleaks trufflehog codeql",
     "Security scanners (semgrep, trivy, bandit, ...): a scan of a repository or an image takes minutes, so "
     "calls get ten minutes and five count as slow."),
)
# fmt: on

DISTRESS_PATTERNS: tuple[str, ...] = (
    # timeouts
    r"\btime[ds]? ?out(s|error)?\b|deadline exceeded|\bETIMEDOUT\b",
    # connections refused, reset or failing, as Python, Node, Go and curl word them
    r"connection (was |has been )?(refused|reset|aborted|closed|failed|lost|error)",
    r"\bE(CONNREFUSED|CONNRESET|CONNABORTED|HOSTUNREACH|NETUNREACH|PIPE)\b|\[Errno (32|101|104|110|111|113)\]",
    r"all connection attempts failed|\b(Connect|Read|Write|Pool)Timeout\b|\b(ConnectError|RemoteProtocolError)\b",
    r"\b(could not|couldn't|cannot|can't|unable to|failed to) (connect|reach|establish)|broken pipe",
    r"network is unreachable|no route to host|server disconnected|socket hang up|\bEOF occurred\b",
    # DNS
    r"\bE(NOTFOUND|AI_AGAIN|AI_NONAME)\b|getaddrinfo|name or service not known|nodename nor servname",
    r"temporary failure in name resolution|\bdns (lookup|resolution) failed|could not resolve host",
    # HTTP 5xx, 429 and rate limiting
    r"\b(status( code)?|http( error)?|response|code|error)[ :=]+(5\d\d|429)\b|\bHTTP/\d(\.\d)? (5\d\d|429)\b",
    r"\b(5\d\d|429)[ :]+(internal server error|bad gateway|service unavailable|gateway time-?out|too many requests)",
    r"internal server error|bad gateway|gateway time-?out|too many requests|rate[ _-]?limit(ed|ing)?\b",
    r"\bthrottl(ed|ing)\b|quota exceeded|resource[ _]exhausted|try again later|retry later",
    # the server or its backend unwell
    r"\bunavailable\b|\boverloaded\b|\binternal error\b|server (is )?busy|out of memory|no space left on device",
    # the backend refusing the server's credentials
    r"\bunauthori[sz]ed\b|\bauthentication (failed|failure|error|required)\b|\b(invalid|expired|bad) "
    r"(api[ _-]?key|access[ _-]?token|auth(entication)?[ _-]?token|token|credentials)\b|\btoken (has )?expired\b",
)
"""What every server's `isError` text is a failure for (the README's error classification): timeouts, connections
refused, reset or failing, DNS failures, HTTP 5xx, 429 and rate limiting, "unavailable", "overloaded", "internal
error", the backend refusing credentials. Regexes, searched case-insensitively."""

# fmt: off
_DISTRESS: Mapping[str, tuple[str, ...]] = {
    "claude": (r"overloaded_error|api_error|rate_limit_error|authentication_error|\b529\b",),
    "openai": (r"rate_limit_exceeded|server_error|invalid_api_key|insufficient_quota|APIConnectionError"
               r"|APITimeoutError|InternalServerError",),
    "gemini": (r"RESOURCE_EXHAUSTED|DEADLINE_EXCEEDED|\bUNAUTHENTICATED\b|API key not valid",),
    "deepseek": (r"server (is )?busy|insufficient balance",),
    "groq": (r"rate_limit_exceeded|over capacity",),
    "ollama": (r"llama runner (process )?has terminated|requires more system memory|CUDA error|\bpull model manifest",),
    "docker": (r"cannot connect to the docker daemon|is the docker daemon running|docker\.sock|error during connect"
               r"|daemon is not running|toomanyrequests",),
    "kubernetes": (r"the connection to the server \S+ was refused|unable to connect to the server"
                   r"|the server is currently unable to handle the request|etcdserver|\bServiceUnavailable\b"
                   r"|the server has asked for the client to provide credentials|you must be logged in",),
    "desktop-commander": (r"\bE(MFILE|NOMEM)\b|too many open files",),
    "prometheus": (r"too many samples|query processing would load too many samples|\bexecution\b.*\bcanceled\b",),
    "slack": (r"\bratelimited\b|\b(service_unavailable|fatal_error|internal_error|request_timeout|invalid_auth"
              r"|token_revoked|token_expired|not_authed)\b",),
    "s3": (r"\bSlowDown\b|\bServiceUnavailable\b|\bInternalError\b|\bRequestTimeout\b|InvalidAccessKeyId"
           r"|SignatureDoesNotMatch|ExpiredToken|EndpointConnectionError|could not connect to the endpoint",),
    "security-scanner": (r"(failed to|could not) (download|update|fetch) (the )?(vulnerability )?(db|database)"
                         r"|\bTOOMANYREQUESTS\b",),
}
# fmt: on

PRESETS: Mapping[str, Preset] = {
    name: Preset(
        name,
        low,
        high,
        doc,
        {"call_timeout": call, "slow_call_duration": slow},
        tuple(words.split()),
        _DISTRESS.get(name, ()),
    )
    for name, low, high, call, slow, words, doc in _TABLE
}
"""The thirteen service presets (README, "Policies"), each explained in its `doc`."""

PRESET_ALIASES: Mapping[str, str] = {"gpt-4": "openai"}


def check_environment(name: str) -> str:
    """The canonical environment name (case-insensitive).

    Raises:
        ValueError: not one of the four environments (the message lists them).
    """
    canonical = name.strip().lower()
    if canonical not in ENVIRONMENTS:
        raise ValueError(f"unknown environment {name!r}; valid: {', '.join(sorted(ENVIRONMENTS))}")
    return canonical


def check_preset(name: str) -> Preset:
    """The preset called `name` (or an alias of it).

    Raises:
        ValueError: no such preset (the message lists the valid names).
    """
    canonical = PRESET_ALIASES.get(name.strip().lower(), name.strip().lower())
    if canonical not in PRESETS:
        valid = sorted([*PRESETS, *PRESET_ALIASES, "none"])
        raise ValueError(f"unknown preset {name!r}; valid: {', '.join(valid)}")
    return PRESETS[canonical]


def environment_from(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(environment, where it came from) from `$CIRCUITBOX_ENV`, else `$ENVIRONMENT`, else production.

    Raises:
        ValueError: the variable names an unknown environment.
    """
    env = os.environ if env is None else env
    for var in ("CIRCUITBOX_ENV", "ENVIRONMENT"):
        if env.get(var):
            try:
                return check_environment(env[var]), f"${var}"
            except ValueError as exc:
                raise ValueError(f"${var}: {exc}") from None
    return DEFAULT_ENVIRONMENT, "default"


def profile(environment: str, preset: str | None = None, **overrides: Any) -> CircuitBreakerConfig:
    """The environment profile, with a service preset and overrides on top.

    Raises:
        ValueError: an unknown environment or preset.
        pydantic.ValidationError: an override is unknown or out of range.
    """
    values = dict(ENVIRONMENTS[check_environment(environment)])
    if preset is not None and preset != "none":
        values |= check_preset(preset).values(environment)
    return CircuitBreakerConfig(**(values | overrides))


def get_circuit_breaker_config(name: str, service_type: str | None = None) -> CircuitBreakerConfig:
    """The seed's `get_circuit_breaker_config(name, type)`: the policy for a named service in this environment.

    The environment comes from `$CIRCUITBOX_ENV` / `$ENVIRONMENT` (default production). `service_type` may name a
    preset; anything else (the seed's `"ai_provider"`, `"mcp_service"`) falls back to inferring the preset from
    `name`, and to no preset when nothing matches.
    """
    environment, _ = environment_from()
    preset: str | None = None
    if service_type is not None:
        try:
            preset = check_preset(service_type).name
        except ValueError:
            preset = None
    if preset is None:
        preset = infer_preset(name)
    return profile(environment, preset, name=name)


# Inference. Text is cut into words at anything that is not a letter or digit and at camelCase humps; a keyword
# matches whole words only, so "s3" is not found in "mass3d" nor "gpt" in "egpt", and "dockerfile-linter" is not
# Docker. Words are also cut at letter/digit changes ("gpt4o" -> gpt 4 o), but keywords that contain digits
# ("s3", "k8s") match only uncut words.
_HUMP = re.compile(r"(?<=[a-z])(?=[A-Z])")
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")
_DIGITS = re.compile(r"(?<=[a-z])(?=[0-9])|(?<=[0-9])(?=[a-z])")


def _words(text: str) -> list[str]:
    return [w for w in _NON_WORD.split(_HUMP.sub(" ", text).lower()) if w]


def _word_lists(text: str) -> tuple[list[str], list[str]]:
    words = _words(text)
    return words, [part for w in words for part in _DIGITS.sub(" ", w).split()]


def _contains(words: Sequence[str], phrase: Sequence[str]) -> bool:
    n = len(phrase)
    return any(list(words[i : i + n]) == list(phrase) for i in range(len(words) - n + 1))


def _match(text: str) -> str | None:
    whole, parts = _word_lists(text)
    best: tuple[int, str] | None = None
    for preset in PRESETS.values():
        for keyword in preset.keywords:
            phrase = keyword.split("-")
            if (_contains(whole, phrase) or _contains(parts, phrase)) and (best is None or len(phrase) > best[0]):
                best = (len(phrase), preset.name)
    return None if best is None else best[1]


def infer_preset(name: str, command: str | None = None, args: Iterable[str] = (), url: str | None = None) -> str | None:
    """The preset a server's name, command, args or URL point to, in that order of trust; None when none does.

    Within one of them a longer phrase beats a shorter one ("claude-desktop-commander" is desktop-commander).
    """
    for text in (name, command or "", " ".join(args), url or ""):
        found = _match(text)
        if found is not None:
            return found
    return None


__all__ = [
    "DEFAULT_ENVIRONMENT",
    "DISTRESS_PATTERNS",
    "ENVIRONMENTS",
    "PRESETS",
    "PRESET_ALIASES",
    "Preset",
    "check_environment",
    "check_preset",
    "environment_from",
    "get_circuit_breaker_config",
    "infer_preset",
    "profile",
]
