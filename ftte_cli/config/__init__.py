"""User-facing configuration: recipes and inventories, validated once."""
