"""prism-lab: experiment management and benchmarks for PRISM-style multimodal post-training."""

import os

__version__ = "0.1.0"

# Hub kernels off unless the user turns them on. transformers (5.25 on, with the `kernels` package it pulls
# in) replaces layers with kernels downloaded from the Hub at load time: a run-time download, which the
# offline promise forbids, and kernelizing rejects `device_map="meta"` loading ("Unsupported device type
# 'meta'"). transformers reads USE_HUB_KERNELS (transformers/integrations/hub_kernels.py): 5.24 once at
# import, 5.25 at every load. Set here, on the ground floor, it precedes every transformers import in every
# process prism-lab starts (CLI, stage processes, torchrun ranks, Ray workers, the VLMEvalKit worker all
# import prism_lab first) and the child processes inherit it. A user's own value is kept.
os.environ.setdefault("USE_HUB_KERNELS", "0")
