"""Serving: the MCP server over stdio and Streamable HTTP, and logging."""
