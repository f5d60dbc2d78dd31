"""The rstar kernel: config, schemas, the step format, grading, problems, models and statistics.

Every part (``store``, ``broker``, ``actors``, ``learner``) and the app on top import it; it
imports none of them (``tests/unit/test_layout.py`` checks).
"""
