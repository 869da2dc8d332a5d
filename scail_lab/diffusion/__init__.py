"""Flow-matching objective pieces, sigma schedules, samplers and guidance (pure torch)."""
