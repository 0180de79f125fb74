"""fireworks-pilot: demand-driven pilot jobs for FireWorks on HPC clusters."""

__version__ = "0.1.0"
