"""The circuitbox MCP proxy: config, policies, downstreams, the guarded call and the upstream server."""
