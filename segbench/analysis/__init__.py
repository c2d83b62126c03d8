"""Reading runs back: comparisons, BN diagnostics and benchmarks."""
