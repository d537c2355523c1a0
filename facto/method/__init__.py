"""The method: Tucker-2/SVD factors (`decompose`), factorized layers that store only their trainable
stage's input and 1-bit ReLU masks (`layers`), conv+BatchNorm fused to recompute BN's input
(`recompute`), model surgery (`factorize`) and back to a plain model (`dense`). Knows nothing of runs.
"""
