"""Training code, kept apart from inference (importing ``semcomp`` never imports this package)."""
