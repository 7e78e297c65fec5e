"""Low-level helpers. Nothing here imports the rest of the package."""
