"""How many images an evaluation puts through G, D, SSIM and the feature network at once.

The figures do not depend on it beyond float rounding (every image is computed on its
own, and the z stream is drawn one value at a time, whatever the chunks); only speed and
memory do. A CPU gains nothing from larger batches; a GPU does, as far as its free
memory allows.
"""

from __future__ import annotations

import torch

CPU_BATCH = 64
MIN_GPU_BATCH, MAX_GPU_BATCH = 16, 256
# A generous bound on one image's working memory in an evaluation: Inception-v3 at
# 299x299 in fp32 inference peaks at a few tens of MB per image, and G or D of a
# 128x128, n = 128 model at about as much.
BYTES_PER_IMAGE = 32 * 2**20
SHARE_OF_FREE_MEMORY = 0.25  # the rest stays for the training it interrupts (and other runs)


def eval_batch_size(device: torch.device | str) -> int:
    """Images per evaluation batch on `device`: 64 on a CPU; on a GPU as many as a quarter
    of its free memory holds at BYTES_PER_IMAGE each, within [16, 256]."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_BATCH
    free, _ = torch.cuda.mem_get_info(device)
    # Memory this process's allocator holds but no tensor uses is free to it as well.
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    fits = int(free * SHARE_OF_FREE_MEMORY) // BYTES_PER_IMAGE
    return max(MIN_GPU_BATCH, min(MAX_GPU_BATCH, fits))
