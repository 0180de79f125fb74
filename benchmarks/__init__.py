"""Benchmarks of fireworks-pilot against FireWorks' own qlaunch/rlaunch (``python3 benchmarks/run.py``).

Not installed with the package and not part of the test suite; ``tests/project/test_benchmarks_smoke.py`` runs the
command at its smallest sizes so that it keeps working.
"""
