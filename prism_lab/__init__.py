"""prism-lab: experiment management and benchmarks for PRISM-style multimodal post-training."""

__version__ = "0.1.0"
