"""rstar: learner."""
