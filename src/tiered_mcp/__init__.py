"""tiered-mcp: an MCP server that runs routine steps on cheaper model tiers, validates, escalates and keeps receipts."""

__version__ = "0.1.0"

__all__ = ["__version__"]
