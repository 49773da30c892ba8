"""The real-data layer: preprocessing, a labeller's output and its units, conventional sorters
as baselines, and the workflow that trains E-Sort on a labeller's first stretch and sorts the
whole recording (`workflow.run_esort`)."""
