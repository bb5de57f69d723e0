"""The ``medstream`` command: one subcommand per job.

``medstream.cli`` is the composition root: it is the only package that imports from all of
``runtime``, ``export``, ``calibration`` and ``benchmarks``; none of them imports it. Each subcommand
is a module under :mod:`medstream.cli.commands` imported only when that subcommand runs, so
``medstream run`` never loads torch and ``medstream export`` works without a GPU.
"""
