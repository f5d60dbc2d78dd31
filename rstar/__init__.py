"""rstar: rstar."""
