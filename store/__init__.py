"""rstar: store."""
