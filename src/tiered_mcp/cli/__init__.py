"""The `tiered-mcp` command: argument parsing and printing."""
