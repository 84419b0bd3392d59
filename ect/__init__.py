"""ect: reproducibility and benchmarking harness for Easy Consistency Tuning."""

__version__ = "0.1.0"
