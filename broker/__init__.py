"""rstar: broker."""
