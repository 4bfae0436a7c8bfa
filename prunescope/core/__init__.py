"""The infrastructure every stage shares: typed options, registries, run folders (lock, atomic
result files), process groups over several GPUs and figures. Imports nothing else of prunescope."""
