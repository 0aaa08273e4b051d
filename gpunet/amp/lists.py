"""The autocast op lists: which dtype each module computes in under
gpunet.amp.autocast.

They follow PyTorch's "Automatic Mixed Precision" op reference (the
"CUDA Ops that can autocast to float16" and "CUDA Ops that can autocast to
float32" lists of torch.amp): GEMM-shaped ops run in the lower precision,
ops whose accuracy needs the range or the precision of float32 (softmax,
the losses, normalisation statistics, exp/log/pow, reductions) run in
float32, and every other op follows its inputs (the widest floating input).

gpunet applies them at the module boundary, so the tables name module
classes (the functional forms in gpunet.nn.functional run these modules).
"""
from __future__ import annotations

# torch: addmm, matmul, mm, linear, bmm, baddbmm, conv1d/2d/3d, conv_transpose*,
# _convolution, prelu, lstm_cell, gru_cell, rnn_*_cell, scaled_dot_product_attention
LOWER_PRECISION = frozenset({
    "Linear", "Bilinear",
    "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d",
    "LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell",
    "MultiheadAttention", "ScaledDotProductAttention",
    "PReLU",
})

# torch: softmax, log_softmax, the losses (cross_entropy, nll_loss, mse_loss,
# l1_loss, smooth_l1_loss, binary_cross_entropy_with_logits, kl_div, ...),
# layer_norm, group_norm, batch_norm (statistics), exp, log, pow, sum, prod,
# cumsum, cumprod, norm, dist, softplus, cosine_similarity, ...
FLOAT32 = frozenset({
    "Softmax", "LogSoftmax", "Softmin", "Softplus",
    "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss",
    "BCELoss", "BCEWithLogitsLoss", "KLDivLoss", "SoftMarginLoss", "MultiLabelSoftMarginLoss",
    "MarginRankingLoss", "HingeEmbeddingLoss", "CosineEmbeddingLoss", "PoissonNLLLoss", "GaussianNLLLoss",
    "HingeLoss", "PerceptronLoss", "CTCLoss", "TripletMarginLoss", "MultiMarginLoss", "MultiLabelMarginLoss",
    "LayerNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
    "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LocalResponseNorm", "RMSNorm",
    "CosineSimilarity", "PairwiseDistance",
})

LOWER, FP32, PROMOTE = "lower", "float32", "promote"


def policy(module) -> str | None:
    """LOWER, FP32, PROMOTE (a parameterless leaf module not in the lists:
    activations, dropout, pooling, flatten... follow their widest input) or
    None (containers and modules with parameters not in the lists, such as
    Embedding: they run as called, their submodules decide for themselves)."""
    for cls in type(module).__mro__:
        if cls.__name__ in LOWER_PRECISION:
            return LOWER
        if cls.__name__ in FLOAT32:
            return FP32
    has_params = any(p is not None for p in module._params.values())
    has_children = any(m is not None for m in module._modules.values())
    return PROMOTE if not has_params and not has_children else None
