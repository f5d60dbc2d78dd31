"""rstar: actors."""
