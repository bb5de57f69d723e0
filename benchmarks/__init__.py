"""Latency benchmarks: how old is the overlay when it reaches the display, and where does the time go.

``medstream bench`` runs the scenarios in :mod:`medstream.benchmarks.scenarios` as real processes
(:mod:`~medstream.benchmarks.harness`), measures them with a separate subscriber process
(:mod:`~medstream.benchmarks.subscriber`), compares them with a plain single-threaded loop
(:mod:`~medstream.benchmarks.naive_loop`) and writes JSON, Markdown and plots
(:mod:`~medstream.benchmarks.report`). See docs/BENCHMARKS.md.
"""
