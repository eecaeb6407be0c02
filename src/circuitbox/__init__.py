"""circuitbox: an MCP proxy with a circuit breaker per (server, tool), and the breaker engine as a library."""

__version__ = "0.1.0"
__all__ = ["__version__"]
