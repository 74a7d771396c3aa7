"""Model definitions both sides import: blocks, rankers, towers, checkpoints.

``inputs`` (the tensors models read), ``layers`` (loss-free blocks), ``rankers``
(DeepFM, DCN-v2), ``towers`` (two-tower retrieval), ``checkpoint`` (safetensors + JSON).
"""
