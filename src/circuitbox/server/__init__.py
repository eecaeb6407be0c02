"""The MCP runtime: transports, downstream owners, the catalog, the guarded call and circuitbox's own tools."""
