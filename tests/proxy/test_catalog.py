"""The merged catalog: namespacing, collisions, resource routing."""

from __future__ import annotations

import logging

import mcp_types as types
import pytest

from circuitbox.server.catalog import build_catalog
from circuitbox.server.downstream import Listing


def tool(name: str, description: str = "") -> types.Tool:
    return types.Tool(
        name=name,
        description=description or name,
        input_schema={"type": "object"},
        annotations=types.ToolAnnotations(destructive_hint=True),
    )


def test_tools_are_published_under_their_namespace_with_everything_else_intact() -> None:
    catalog = build_catalog([("docker", "docker", Listing(tools=(tool("ps", "list containers"),)))])
    route, published = catalog.tools["docker__ps"]
    assert (route.server, route.name) == ("docker", "ps")
    assert published.description == "list containers"
    assert published.annotations is not None and published.annotations.destructive_hint is True


def test_an_empty_namespace_publishes_names_as_they_are() -> None:
    catalog = build_catalog([("fs", "", Listing(tools=(tool("read_file"),)))])
    assert list(catalog.tools) == ["read_file"]


def test_a_collision_goes_to_the_server_listed_first_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    listings = [("one", "", Listing(tools=(tool("x"),))), ("two", "", Listing(tools=(tool("x"), tool("y"))))]
    with caplog.at_level(logging.WARNING):
        catalog = build_catalog(listings)
    assert catalog.tools["x"][0].server == "one"
    assert catalog.tools["y"][0].server == "two"
    assert "server 'one' already publishes it" in caplog.text


def test_our_own_tool_names_always_win(caplog: pytest.LogCaptureFixture) -> None:
    catalog = build_catalog([("x", "", Listing(tools=(tool("circuit_status"),)))], reserved={"circuit_status"})
    assert "circuit_status" not in catalog.tools
    assert "circuitbox's own tool" in caplog.text


def test_a_resource_read_goes_only_to_the_server_that_offers_it() -> None:
    listed = types.Resource(uri="file:///a.txt", name="a")
    templ = types.ResourceTemplate(uri_template="db://{table}/rows", name="rows")
    both = types.ResourceTemplate(uri_template="shared://{id}", name="shared")
    catalog = build_catalog(
        [
            ("files", "files", Listing(resources=(listed,), templates=(both,))),
            ("db", "db", Listing(templates=(templ, both))),
        ]
    )
    assert catalog.resource_server("file:///a.txt") == "files"
    assert catalog.resource_server("db://users/rows") == "db"
    assert catalog.resource_server("shared://1") is None  # ambiguous: never guess
    assert catalog.resource_server("other://x") is None


@pytest.mark.parametrize(
    "template,uri,matches",
    [
        ("demo://r/{id}", "demo://r/7", True),
        ("demo://r/{id}", "demo://r/7/8", False),
        ("file://{+path}", "file:///etc/hosts", True),
        ("search{?q}", "search?q=x", True),
        ("search{?q}", "search", True),  # no variables set is a match too
        ("search{?q}", "searchZZZ", False),  # a query expression adds "?q=...", never bare text
        ("a.b/{x}", "aXb/1", False),  # literal dots are literal
    ],
)
def test_uri_templates_match_the_uris_they_can_produce(template: str, uri: str, matches: bool) -> None:
    listing = Listing(templates=(types.ResourceTemplate(uri_template=template, name="t"),))
    catalog = build_catalog([("s", "s", listing)])
    assert (catalog.resource_server(uri) == "s") is matches


def test_a_template_the_sdk_cannot_match_is_listed_but_routes_no_read(caplog: pytest.LogCaptureFixture) -> None:
    listing = Listing(templates=(types.ResourceTemplate(uri_template="x://{a}{b}", name="t"),))
    catalog = build_catalog([("s", "s", listing)])
    assert [t.uri_template for t in catalog.template_list()] == ["x://{a}{b}"]
    assert catalog.resource_server("x://ab") is None
    assert "cannot be matched" in caplog.text
