#!/usr/bin/env bash
# Register tiered-mcp with Claude Code as a stdio server named "tiered" (https://code.claude.com/docs/en/mcp).
# Simplest: `tiered-mcp install claude-code` does the same with this machine's absolute command path.
#
# The server's NAME comes first: since Claude Code 2.1, -e/--env takes several values and would swallow a name
# placed after it ("Invalid environment variable format: tiered"). Everything after `--` is the command.
set -euo pipefail

# For you only (local scope, stored in ~/.claude.json). The single quotes keep ${OPENAI_API_KEY} unexpanded, so the
# key itself is never written to disk: Claude Code expands it from its own environment each time it starts the
# server. `:-` makes an unset key expand to nothing (the server then runs the tools the local tier serves); written
# as plain ${OPENAI_API_KEY}, an unset key arrives as literal text, which tiered-mcp also treats as unset, with a
# warning. The config is read from its default location (~/.config/tiered-mcp/config.toml), so the entry
# needs no TIERED_MCP_CONFIG.
claude mcp add tiered --scope local -e 'OPENAI_API_KEY=${OPENAI_API_KEY:-}' -- tiered-mcp serve

# Shared with the team instead: --scope project writes the same entry to ./.mcp.json (see claude-code.mcp.json);
# teammates are asked to approve project servers the first time.
#   claude mcp add tiered --scope project -e 'OPENAI_API_KEY=${OPENAI_API_KEY:-}' -- tiered-mcp serve
#
# Check it: `claude mcp get tiered` (starts the server: "✔ Connected"), `claude mcp list`, or /mcp in a session.
# Remove: `claude mcp remove tiered`.
