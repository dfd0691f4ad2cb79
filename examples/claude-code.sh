#!/usr/bin/env bash
# Register tiered-mcp with Claude Code as a stdio server named "tiered" (https://code.claude.com/docs/en/mcp).
# Options (--transport, --env/-e, --scope) must come before the server name; everything after `--` is the command.
set -euo pipefail

# For you only (local scope, stored in ~/.claude.json). The single quotes keep ${OPENAI_API_KEY} unexpanded, so the
# key itself is never written to disk: Claude Code expands ${VAR} from its own environment each time it starts the
# server. Export OPENAI_API_KEY (and optionally TIERED_MCP_CONFIG) in the shell you start `claude` from.
claude mcp add --transport stdio --scope local \
  --env 'OPENAI_API_KEY=${OPENAI_API_KEY}' \
  --env 'TIERED_MCP_CONFIG=${TIERED_MCP_CONFIG:-}' \
  tiered -- tiered-mcp serve

# Shared with the team instead: --scope project writes the same entry to ./.mcp.json (see claude-code.mcp.json);
# teammates are asked to approve project servers the first time.
#   claude mcp add --transport stdio --scope project --env 'OPENAI_API_KEY=${OPENAI_API_KEY}' tiered -- tiered-mcp serve
#
# Without installing the package (uv fetches and caches it):
#   claude mcp add --transport stdio --env 'OPENAI_API_KEY=${OPENAI_API_KEY}' tiered -- uvx tiered-mcp serve
#
# Check it: `claude mcp list`, `claude mcp get tiered`, or /mcp inside a session. Remove: `claude mcp remove tiered`.
