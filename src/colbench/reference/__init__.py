"""Published reference data shipped with the package (see each file's header)."""
