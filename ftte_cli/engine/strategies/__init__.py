"""engine/strategies."""
