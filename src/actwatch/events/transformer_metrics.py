"""The descriptions of a transformer's per-layer scalars (part of the tag scheme, `tags`).

`{metric}/{layer}` scalars, as the other per-layer metrics; the figures are defined in
`actwatch.check.attention` and `actwatch.check.tokens`.
"""

from __future__ import annotations

__all__ = ["TRANSFORMER_METRICS"]

#: A transformer's per-layer metrics (see `actwatch.check.attention`, `actwatch.check.tokens`)
#: -> description (Markdown). Written per layer only, left out of the custom-scalars layout.
TRANSFORMER_METRICS: dict[str, str] = {
    "attention_entropy": (
        "Attention entropy (Zhai et al., ICML 2023): mean over samples, heads and queries of "
        "-sum A log A / log(number of unmasked keys), in [0, 1]; near 0 is entropy collapse."
    ),
    "attention_entropy_min": "Attention entropy of the lowest head (mean over its queries).",
    "attention_logit_max": (
        "Largest |attention logit| at the softmax's input, as the layer computes it: growth "
        "at high learning rates precedes divergence (Wortsman et al. 2023, arXiv 2309.14322)."
    ),
    "attention_sink": (
        "Mean attention mass on the first key (attention sinks, Gu et al., ICLR 2025)."
    ),
    "token_norm_ratio": (
        "Largest token L2 norm over the median one: high-norm tokens (Darcet et al., ICLR 2024)."
    ),
    "token_similarity": (
        "Mean pairwise cosine between a sample's tokens: 1 is rank collapse (Dong et al. 2021)."
    ),
    "kurtosis": (
        "Kurtosis mean(s^4) / mean(s^2)^2 of the per-channel RMS s over tokens: outlier "
        "features (He et al., NeurIPS 2024); 1 when all channels are alike."
    ),
    "massive_activation": (
        "1 when the largest |a| is > 100 and > 1000x the median |a| (massive activations, "
        "Sun et al. 2024), else 0."
    ),
}
