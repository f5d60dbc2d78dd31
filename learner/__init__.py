"""The learner: ingest, the problem pool, selection, SFT and PPM training, rounds, evaluation and
publishing."""
