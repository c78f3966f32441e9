"""Control loops: placement and node lifecycle (leader only), dispatch to agents (every replica)."""
