"""coral-mcp: Coral as tools for an AI assistant, over MCP (docs/mcp.md)."""
