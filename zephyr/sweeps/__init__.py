"""Sweeps: the study's grids expanded into runs (grid.py), each run's identity (identity.py), and the runner
(runner.py) over two backends, this host (local.py) or a Ray cluster (ray_backend.py). ``python -m zephyr.sweeps``
is the entry point of the shell sweeps (entry.py). Importing this package imports neither torch nor ray."""
