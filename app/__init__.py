"""The application on the top floor: the ``rstar`` command (``app.cli``), ``rstar up`` and its
process supervisor and dashboard, the round reports (tables, markdown, plot) and the presets.

It imports every part below it (``learner``, ``actors``, ``broker``, ``store``, the ``rstar``
kernel); nothing below imports it. ``python -m app`` is the ``rstar`` command.
"""
