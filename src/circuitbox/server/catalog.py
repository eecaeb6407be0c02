"""The merged catalog: every downstream's tools and prompts under `{namespace}__{name}`, and resources by URI.

Rebuilt from the downstreams' latest listings whenever one changes; a downstream that disconnects keeps its last
listing, so its tools stay visible and answer with a clear error until it is back. Collisions are resolved by the
order of the servers in the config file (the first one wins) with a warning; circuitbox's own tools always win.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import mcp_types as types
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

from circuitbox.server.downstream import Listing

logger = logging.getLogger("circuitbox.catalog")

SEPARATOR = "__"


def published_name(namespace: str, name: str) -> str:
    return f"{namespace}{SEPARATOR}{name}" if namespace else name


@dataclass(frozen=True)
class Route:
    """Where a published tool or prompt lives: the server's config key and the name the downstream uses."""

    server: str
    name: str


@dataclass(frozen=True)
class Catalog:
    tools: Mapping[str, tuple[Route, types.Tool]] = field(default_factory=dict)
    prompts: Mapping[str, tuple[Route, types.Prompt]] = field(default_factory=dict)
    resources: Mapping[str, tuple[str, types.Resource]] = field(default_factory=dict)
    templates: tuple[tuple[UriTemplate | None, str, types.ResourceTemplate], ...] = ()

    def tool_list(self) -> list[types.Tool]:
        return [tool for _, tool in self.tools.values()]

    def prompt_list(self) -> list[types.Prompt]:
        return [prompt for _, prompt in self.prompts.values()]

    def resource_list(self) -> list[types.Resource]:
        return [resource for _, resource in self.resources.values()]

    def template_list(self) -> list[types.ResourceTemplate]:
        return [template for _, _, template in self.templates]

    def tools_of(self, server: str) -> list[str]:
        return [route.name for route, _ in self.tools.values() if route.server == server]

    def resource_server(self, uri: str) -> str | None:
        """The one server a read of `uri` may go to: the server that listed it, else the only template match.

        Returns None when no server offers it or when several templates match (guessing could send a read to the
        wrong server).
        """
        listed = self.resources.get(uri)
        if listed is not None:
            return listed[0]
        matches = {
            server for parsed, server, _ in self.templates if parsed is not None and parsed.match(uri) is not None
        }
        return matches.pop() if len(matches) == 1 else None


# (server, the downstream's tool name) -> the name to publish it under before the namespace, or None: not published.
ToolNamer = Callable[[str, str], "str | None"]


def build_catalog(
    listings: Iterable[tuple[str, str, Listing]],
    reserved: Collection[str] = (),
    tool_name: ToolNamer | None = None,
    task_servers: Collection[str] = (),
) -> Catalog:
    """Merge `(server, namespace, listing)` triples, in config order; `tool_name` applies each server's `include`,
    `exclude` and `rename` (a tool it does not publish is neither listed nor routed, so it cannot be called).
    The tools of `task_servers` (those whose task-augmented calls circuitbox relays, tasks.py) keep their
    `execution.taskSupport`; the other servers' tools are published as circuitbox can call them."""
    tools: dict[str, tuple[Route, types.Tool]] = {}
    prompts: dict[str, tuple[Route, types.Prompt]] = {}
    resources: dict[str, tuple[str, types.Resource]] = {}
    templates: list[tuple[UriTemplate | None, str, types.ResourceTemplate]] = []
    for server, namespace, listing in listings:
        for tool in listing.tools:
            own = tool.name if tool_name is None else tool_name(server, tool.name)
            if own is None:
                continue
            name = published_name(namespace, own)
            published = tool if server in task_servers else _without_tasks(tool, server)
            if published is not None and _claim(name, server, tools, reserved, "tool"):
                tools[name] = (Route(server, tool.name), published.model_copy(update={"name": name}))
        for prompt in listing.prompts:
            name = published_name(namespace, prompt.name)
            if _claim(name, server, prompts, (), "prompt"):
                prompts[name] = (Route(server, prompt.name), prompt.model_copy(update={"name": name}))
        for resource in listing.resources:
            if _claim(str(resource.uri), server, resources, (), "resource"):
                resources[str(resource.uri)] = (server, resource)
        for template in listing.templates:
            templates.append((_parse_template(template.uri_template, server), server, template))
    return Catalog(tools, prompts, resources, tuple(templates))


def _without_tasks(tool: types.Tool, server: str) -> types.Tool | None:
    """The tool of a server that does not declare tasks as circuitbox can publish it: task-augmented calls to it are
    not relayed, so its `execution.taskSupport` is not advertised; a tool that *requires* a task cannot be called
    through circuitbox and is not published."""
    support = tool.execution.task_support if tool.execution is not None else None
    if support in (None, "forbidden"):
        return tool
    if support == "required":
        logger.warning("tool %r of server %r is hidden: it requires task-augmented calls, and the server does not "
                       "declare tasks for tools/call", tool.name, server)  # fmt: skip
        return None
    return tool.model_copy(update={"execution": None})


def _claim(name: str, server: str, taken: Mapping[str, object], reserved: Collection[str], kind: str) -> bool:
    if name in reserved:
        logger.warning("%s %r of server %r is hidden: circuitbox's own tool has that name", kind, name, server)
        return False
    if name in taken:
        owner = taken[name]
        first = owner[0] if isinstance(owner, tuple) else owner
        first_server = first.server if isinstance(first, Route) else first
        logger.warning("%s %r of server %r is hidden: server %r already publishes it", kind, name, server, first_server)
        return False
    return True


def _parse_template(template: str, server: str) -> UriTemplate | None:
    """The SDK's RFC 6570 matcher for a template; None (listed, but routing no read) when it cannot match it."""
    try:
        return UriTemplate.parse(template)
    except InvalidUriTemplate as exc:
        logger.warning(
            "resource template %r of server %r cannot be matched, reads by it fail: %s", template, server, exc
        )
        return None
