"""The effective policy of one (server, tool), and where each of its values comes from.

Layers, lowest first: built-in defaults, environment profile, service preset, the file's `defaults`, the server's
`breaker` (and its server-level classification keys), then the `tools` entries that match the tool: globs from the
shortest to the longest (equal lengths in file order), then the exact name. Each layer replaces the values it
sets, lists included. Resolution is a pure function of the config, so a reloaded config simply resolves again.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from pydantic import ValidationError

from circuitbox.breakers import CircuitBreakerConfig
from circuitbox.breakers.profiles import DISTRESS_PATTERNS, ENVIRONMENTS, check_preset
from circuitbox.config.model import (
    BREAKER_FIELDS,
    PROXY_FIELDS,
    ConfigError,
    Overrides,
    RateLimit,
    describe,
    key_path,
    problems,
)

POLICY_FIELDS: tuple[str, ...] = BREAKER_FIELDS + PROXY_FIELDS
"""Every field of a `ToolPolicy`, in display order (`call_timeout` is the breaker's)."""

_BUILT_IN = ("default", "environment", "preset")

MAX_CALL_FACTOR = 10
"""`max_call_timeout` defaults to this many times `call_timeout`."""

DISTRESS = "distress"
"""The layer key of the distress patterns (set by the built-in layers only)."""

INPUT_VALIDATION = r"^\s*(MCP error -32602|Input validation error|Invalid (arguments|params|parameters))"
"""An `isError` text that *starts* as an input-validation report is the caller's mistake, in every mode ("Output
validation error", or an API's own "validation error" deep in a message, is the server's trouble)."""


@dataclass(frozen=True)
class TextFallback:
    """Answer a rejected call with this text (as a non-error result)."""

    text: str


@dataclass(frozen=True)
class ToolFallback:
    """Answer a rejected call by calling this tool instead ("namespace__tool", as published)."""

    tool: str


MAX_STALE_AGE = 7 * 86400
"""The longest `max_age` a last-known-good answer may have (a week)."""


@dataclass(frozen=True)
class LastKnownGood:
    """Answer a rejected or failed call of a read-only tool with its last successful result for the same
    arguments, at most `max_age` seconds old; without one, `then` (a text or tool fallback), if any."""

    max_age: float = 300.0
    then: TextFallback | ToolFallback | None = None


Fallback = TextFallback | ToolFallback | LastKnownGood


@dataclass(frozen=True)
class RetryPolicy:
    """`retry`: attempts in all, backoff base and cap (full jitter), budget (fraction of the calls in 10 s)."""

    attempts: int = 3
    backoff: float = 0.1
    max_backoff: float = 2.0
    budget: float = 0.2


@dataclass(frozen=True)
class RateLimitPolicy:
    """A token bucket: `calls` tokens per `per` seconds, holding at most `burst`."""

    calls: int
    per: float
    burst: int

    def table(self) -> dict[str, Any]:
        return {"calls": self.calls, "per": self.per, "burst": self.burst}


@dataclass(frozen=True)
class ToolPolicy:
    """Everything the proxy needs to guard one (server, tool)."""

    breaker: CircuitBreakerConfig
    call_timeout: float
    max_call_timeout: float | None
    """None: `MAX_CALL_FACTOR` x `call_timeout` (see `call_limit`)."""
    fallback: Fallback | None
    tool_errors: Literal["classified", "failure", "ignore"]
    ignore_errors: tuple[re.Pattern[str], ...]
    failure_errors: tuple[re.Pattern[str], ...]
    sources: Mapping[str, str]
    """field -> "default" | "environment" | "preset" | "defaults" | "server" | "tool:<pattern>"."""
    distress: tuple[tuple[str, str], ...] = ()
    """(source, regex) of the built-in and preset patterns by which `isError` texts report the server's distress:
    failures under `tool_errors = "classified"`. Not a config key: `failure_errors` adds to them."""
    tool_list: Literal["annotate", "hide", "static"] = "annotate"
    retry: RetryPolicy | None = None
    idempotent: bool = False
    """Retries allowed although the tool's annotations say neither readOnlyHint nor idempotentHint."""

    @property
    def last_known_good(self) -> LastKnownGood | None:
        return self.fallback if isinstance(self.fallback, LastKnownGood) else None

    max_concurrent: int | None = None
    """Calls in flight at once; None: no cap."""
    rate_limit: RateLimitPolicy | None = None
    queue_timeout: float = 0.0
    """Seconds a call may wait for a slot or a token; 0: answered at once."""

    @property
    def limited(self) -> bool:
        """Whether calls wait for anything of this tool's own (a slot or a token) before the breaker."""
        return self.max_concurrent is not None or self.rate_limit is not None

    @property
    def call_limit(self) -> float:
        """The longest a call may run, progress notifications or not."""
        return self.max_call_timeout if self.max_call_timeout is not None else MAX_CALL_FACTOR * self.call_timeout

    @property
    def distress_regex(self) -> re.Pattern[str] | None:
        """All of `distress` as one case-insensitive regex (compiled once per pattern set)."""
        return _combined(tuple(p for _, p in self.distress))

    def raw_value(self, field: str) -> Any:
        """A field's value as `resolve` takes it (regexes compiled, fallbacks as objects)."""
        return getattr(self.breaker if field in BREAKER_FIELDS else self, field)

    def value(self, field: str) -> Any:
        """A field's value as the config file spells it (regexes as strings, fallbacks as tables)."""
        if field in BREAKER_FIELDS:
            return getattr(self.breaker, field)
        raw = getattr(self, field)
        if isinstance(raw, TextFallback | ToolFallback | LastKnownGood):
            return _fallback_value(raw)
        if isinstance(raw, RetryPolicy):
            return dataclasses.asdict(raw)
        if isinstance(raw, RateLimitPolicy):
            return raw.table()
        if isinstance(raw, tuple):
            return [p.pattern for p in raw]
        return raw


def _fallback_value(fallback: Fallback) -> dict[str, Any]:
    if isinstance(fallback, TextFallback):
        return {"text": fallback.text}
    if isinstance(fallback, ToolFallback):
        return {"tool": fallback.tool}
    then = _fallback_value(fallback.then) if fallback.then is not None else {}
    return {"last_known_good": {"max_age": fallback.max_age}, **then}


@dataclass(frozen=True)
class Layer:
    """The values one place in the config sets: `source` for display, `path` for error messages."""

    source: str
    path: str
    values: Mapping[str, Any]


def make_layer(
    overrides: Overrides | None, source: str, path: tuple[str, ...], extra: Overrides | None = None
) -> Layer:
    """Validate one override table (types are already checked) and convert it to policy values.

    Raises:
        ConfigError: a value out of range, a bad fallback or regex; the message names the full key path.
    """
    values: dict[str, Any] = {}
    for table in (overrides, extra):
        if table is not None:
            for field in table.model_fields_set:
                values[field] = getattr(table, field)
    breaker = {k: v for k, v in values.items() if k in BREAKER_FIELDS}
    try:
        CircuitBreakerConfig(**breaker)
    except ValidationError as exc:
        # Cross-field rules (loc ()) wait for the merged policy: another layer may set the other field.
        errors = [e for e in exc.errors() if e["loc"]]
        if errors:
            raise ConfigError.of(problems(errors, prefix=path)) from None
    where = key_path(path)
    if "fallback" in values:
        values["fallback"] = _fallback(values["fallback"], f"{where}.fallback")
    if values.get("retry") is not None:
        values["retry"] = RetryPolicy(**values["retry"].model_dump())
    for field in ("ignore_errors", "failure_errors"):
        if field in values:
            values[field] = _regexes(values[field], f"{where}.{field}")
    if isinstance(values.get("rate_limit"), RateLimit):
        raw = values["rate_limit"]
        values["rate_limit"] = RateLimitPolicy(raw.calls, raw.per, raw.burst if raw.burst is not None else raw.calls)
    if "queue_timeout" in values and values["queue_timeout"] is None:
        values["queue_timeout"] = 0.0  # null: the default, no waiting
    return Layer(source, where, MappingProxyType(values))


_FALLBACK_SHAPES = (
    'expected {"text": ...}, {"tool": "namespace__tool"} or {"last_known_good": {"max_age": s}} '
    "(last_known_good may come with a text or a tool for when no answer is kept)"
)


def _fallback(raw: Mapping[str, Any] | None, path: str) -> Fallback | None:
    if raw is None:
        return None
    rest = {k: v for k, v in raw.items() if k != "last_known_good"}
    then: TextFallback | ToolFallback | None = None
    if set(rest) == {"text"} or set(rest) == {"tool"}:
        key, value = next(iter(rest.items()))
        if not isinstance(value, str):
            raise ConfigError(f"{path}.{key}: expected a string, got {type(value).__name__}")
        then = TextFallback(value) if key == "text" else ToolFallback(value)
    elif rest or "last_known_good" not in raw:
        raise ConfigError(f"{path}: {_FALLBACK_SHAPES}, got keys {sorted(raw)}")
    if "last_known_good" not in raw:
        return then
    return LastKnownGood(_max_age(raw["last_known_good"], f"{path}.last_known_good"), then)


def _max_age(raw: Any, path: str) -> float:
    if not isinstance(raw, Mapping) or set(raw) - {"max_age"}:
        raise ConfigError(f'{path}: expected {{"max_age": seconds}} (or {{}} for the default, 300)')
    age = raw.get("max_age", 300.0)
    if isinstance(age, bool) or not isinstance(age, int | float) or not 0 < age <= MAX_STALE_AGE:
        raise ConfigError(f"{path}.max_age: expected a number of seconds above 0 and at most {MAX_STALE_AGE}")
    return float(age)


def _regexes(raw: Sequence[str] | None, path: str) -> tuple[re.Pattern[str], ...]:
    out = []
    for i, pattern in enumerate(raw or ()):
        try:
            out.append(re.compile(pattern))
        except re.error as exc:
            raise ConfigError(f"{path}[{i}]: invalid regular expression: {exc}") from None
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _combined(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns), re.IGNORECASE) if patterns else None


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def tool_layers(tools: Sequence[tuple[str, Layer]], tool: str) -> list[Layer]:
    """The `tools` layers that apply to `tool`, weakest first: globs by length (then file order), then exact."""
    globs = [(len(p), i, layer) for i, (p, layer) in enumerate(tools) if is_glob(p) and fnmatch.fnmatchcase(tool, p)]
    exact = [layer for p, layer in tools if not is_glob(p) and p == tool]
    return [layer for _, _, layer in sorted(globs, key=lambda g: (g[0], g[1]))] + exact


def base_layers(environment: str, preset: str | None) -> list[Layer]:
    """Built-in defaults, environment profile, service preset."""
    default = CircuitBreakerConfig()
    builtin: dict[str, Any] = {f: getattr(default, f) for f in BREAKER_FIELDS}
    builtin |= {
        "max_call_timeout": None,
        "fallback": None,
        "tool_list": "annotate",
        "retry": None,
        "idempotent": False,
        "tool_errors": "classified",
        "ignore_errors": (),
        "failure_errors": (),
        "max_concurrent": None,
        "rate_limit": None,
        "queue_timeout": 0.0,
    }
    distress = tuple(("default", p) for p in DISTRESS_PATTERNS)
    layers = [
        Layer("default", "default", {**builtin, DISTRESS: distress}),
        Layer("environment", "environment", ENVIRONMENTS[environment]),
    ]
    if preset is not None:
        found = check_preset(preset)
        distress += tuple((f"preset:{found.name}", p) for p in found.distress)
        layers.append(Layer("preset", "preset", {**found.values(environment), DISTRESS: distress}))
    return layers


def resolve(name: str, layers: Sequence[Layer]) -> ToolPolicy:
    """Merge `layers` (weakest first) into a policy named `name`.

    Raises:
        ConfigError: the merged values contradict each other (e.g. `max_timeout` below `timeout`); the message
            names the most specific key involved.
    """
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    paths: dict[str, str] = {}
    for layer in layers:
        for field, value in layer.values.items():
            values[field], sources[field], paths[field] = value, layer.source, layer.path
    # A longer open period set by the user carries the cap along unless the user set the cap too.
    if values["timeout"] > values["max_timeout"] and sources["max_timeout"] in _BUILT_IN:
        values["max_timeout"], sources["max_timeout"] = values["timeout"], sources["timeout"]
        paths["max_timeout"] = paths["timeout"]
    try:
        breaker = CircuitBreakerConfig(name=name, **{f: values[f] for f in BREAKER_FIELDS})
    except ValidationError as exc:
        message = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
        involved = [f for f in BREAKER_FIELDS if re.search(rf"\b{f}\b", message)]
        key = max(involved, key=lambda f: _strength(layers, paths[f]), default=None)
        where = f"{paths[key]}.{key}" if key and sources[key] not in _BUILT_IN else name
        raise ConfigError(f"{where}: {message}") from None
    longest = values["max_call_timeout"]
    if longest is not None and not breaker.call_timeout <= longest <= 7 * 86400:
        raise ConfigError(
            f"{paths['max_call_timeout']}.max_call_timeout: must be between call_timeout "
            f"({breaker.call_timeout:g}) and a week (604800), got {longest:g}"
        )
    return ToolPolicy(
        breaker=breaker,
        call_timeout=breaker.call_timeout,
        max_call_timeout=longest,
        fallback=values["fallback"],
        tool_errors=values["tool_errors"],
        ignore_errors=tuple(values["ignore_errors"]),
        failure_errors=tuple(values["failure_errors"]),
        sources=MappingProxyType({f: sources[f] for f in POLICY_FIELDS}),
        distress=values.get(DISTRESS, ()),
        tool_list=values["tool_list"],
        retry=values["retry"],
        idempotent=values["idempotent"],
        max_concurrent=values["max_concurrent"],
        rate_limit=values["rate_limit"],
        queue_timeout=values["queue_timeout"],
    )


def error_rules(policy: ToolPolicy) -> list[dict[str, str]]:
    """How `policy` counts an `isError` result, as `{"pattern", "counts_as", "source"}` rules in the order they
    are tried (the first that matches the text decides; the last one matches everything)."""
    rules = [
        {"pattern": p.pattern, "counts_as": "failure", "source": policy.sources["failure_errors"]}
        for p in policy.failure_errors
    ]
    rules += [
        {"pattern": p.pattern, "counts_as": "ignored", "source": policy.sources["ignore_errors"]}
        for p in policy.ignore_errors
    ]
    rules.append({"pattern": INPUT_VALIDATION, "counts_as": "ignored", "source": "default"})
    if policy.tool_errors == "classified":
        rules += [{"pattern": p, "counts_as": "failure", "source": source} for source, p in policy.distress]
    rest = "failure" if policy.tool_errors == "failure" else "ignored"
    rules.append({"pattern": "(any other text)", "counts_as": rest, "source": policy.sources["tool_errors"]})
    return rules


def describe_policy(policy: ToolPolicy) -> dict[str, dict[str, Any]]:
    """Every field as `{"value", "source"}`: what `check --json` prints and `circuit_configure` answers."""
    return {f: {"value": policy.value(f), "source": policy.sources[f]} for f in POLICY_FIELDS}


RUNTIME_SOURCE = "circuit_configure"


def retune(policy: ToolPolicy, settings: Mapping[str, Any], source: str = RUNTIME_SOURCE) -> ToolPolicy:
    """`policy` with `settings` (policy fields, as a config file's `tools` entry spells them) laid on top.

    Validated exactly like a layer of the file (strict types, ranges, cross-field rules); the values set name
    `source` as theirs.

    Raises:
        ConfigError: naming `settings.<field>` and the problem.
    """
    try:
        overrides = Overrides.model_validate(dict(settings))
    except ValidationError as exc:
        raise ConfigError(describe(exc.errors(), prefix=("settings",))) from None
    current = {f: policy.raw_value(f) for f in POLICY_FIELDS}
    layers = [Layer(policy.sources[f], policy.sources[f], {f: v}) for f, v in current.items()]
    layers.append(Layer("default", "default", {DISTRESS: policy.distress}))
    return resolve(policy.breaker.name, [*layers, make_layer(overrides, source, ("settings",))])


def _strength(layers: Sequence[Layer], path: str) -> int:
    return next(i for i, layer in enumerate(layers) if layer.path == path)
