"""Developer scripts: the dev stack, the simulated call, benchmarks."""
