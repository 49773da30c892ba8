"""Runtime plumbing: the artefact cache, provenance, the run logger (the only W&B import), host
memory settings, prefetching threads and benchmarking helpers."""
