"""Model manifests: parsing and strict validation."""
