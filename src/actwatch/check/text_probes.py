"""Text probes: sentences tokenized by the user's tokenizer, and the tokens' labels.

A text model's probes are token ids: an int array `(probes, tokens)`, or a dict of arrays for
models with several inputs (KerasHub backbones take `{"token_ids", "padding_mask"}`, BERT also
`"segment_ids"`), checked as any probes are (`actwatch.check.probes`). With
`preprocess=` a KerasHub tokenizer or preprocessor (anything with `id_to_token`, itself or as
its `.tokenizer`), probes (and `stats_data`) may also be strings: they are tokenized once,
before training, and the pictures label each token with `id_to_token` (else with its id).

```python
preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=16)
monitor = actwatch.ActivationMonitor(
    probes=["the cat sat", "a dog ran"], preprocess=preprocessor, log_dir="logs"
)
```
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from actwatch.check.probes import ModelInputs, ProbeBatch, ProbeSource, read_probe_source

__all__ = [
    "Vocabulary",
    "check_strings",
    "is_text",
    "padding_lengths",
    "read_text_probes",
    "structured_feed",
    "token_id_input",
    "token_labels",
    "vocabulary_of",
]

#: Token id -> its text (a KerasHub tokenizer's `id_to_token`).
Vocabulary = Callable[[int], str]


def vocabulary_of(preprocess: Any) -> Vocabulary | None:
    """The `id_to_token` of a tokenizer, or of a preprocessor's `.tokenizer`; None for any
    other `preprocess` (an image function, say)."""
    if preprocess is None:
        return None
    for owner in (preprocess, getattr(preprocess, "tokenizer", None)):
        found = getattr(owner, "id_to_token", None)
        if callable(found):
            return found  # type: ignore[no-any-return]
    return None


def is_text(value: Any) -> bool:
    """Whether `value` is a non-empty list or tuple of strings (or a numpy array of them)."""
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "US" and value.size > 0
    strings = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    return strings and bool(value)


def _dense(value: Any, argument: str, pad: int) -> np.ndarray:
    """One tokenized input as a numpy array: tensors converted, ragged rows padded."""
    if hasattr(value, "to_list"):  # a tf.RaggedTensor
        value = value.to_list()
    elif hasattr(value, "numpy"):  # a tf.Tensor or torch tensor
        value = value.numpy()
    if (
        isinstance(value, (list, tuple))
        and value
        and all(isinstance(row, (list, tuple, np.ndarray)) for row in value)
    ):
        width = max(len(row) for row in value)
        out = np.full((len(value), width), pad, dtype=np.int32)
        for i, row in enumerate(value):
            out[i, : len(row)] = np.asarray(row)
        return out
    try:
        return np.asarray(value)
    except Exception as exc:
        raise TypeError(
            f"Invalid value for argument `{argument}`: the tokenizer returned "
            f"{type(value).__name__}, which could not be made a numpy array ({exc})."
        ) from None


def read_text_probes(value: Any, preprocess: Any, argument: str = "probes") -> ProbeSource | None:
    """Strings tokenized by `preprocess` (a tokenizer or preprocessor, `vocabulary_of`), as
    a checked `ProbeSource`; None when `value` is not strings or `preprocess` no tokenizer.

    A preprocessor's `(x, y, sample_weight)` (causal LMs) gives `x`; a dict gives one input
    per key; ragged token ids are padded (with the tokenizer's `pad_token_id`, else 0).
    """
    if not is_text(value) or vocabulary_of(preprocess) is None:
        return None
    texts = [str(v) for v in np.asarray(value).reshape(-1)]
    try:
        out = preprocess(texts)
    except Exception as exc:
        raise ValueError(
            f"Invalid value for argument `{argument}`: `preprocess` "
            f"({type(preprocess).__name__}) failed on the {len(texts)} strings given "
            f"({type(exc).__name__}: {exc}). Pass strings it accepts, or token ids as an int "
            "array (probes=ids[:4])."
        ) from None
    if isinstance(out, tuple) and out:  # (x, y, sample_weight): the model's input is x
        out = out[0]
    tokenizer = getattr(preprocess, "tokenizer", preprocess)
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = int(pad) if isinstance(pad, (int, np.integer)) else 0
    if isinstance(out, Mapping):
        batch: Any = {str(k): _dense(v, argument, pad) for k, v in out.items()}
    else:
        batch = _dense(out, argument, pad)
    return read_probe_source(batch, argument)


def token_id_input(names: Sequence[str], inputs: Sequence[np.ndarray]) -> int | None:
    """Which input holds the token ids: the one named `token_ids` (KerasHub), else the first
    2-D integer one; None for a model without one (images)."""
    for i, name in enumerate(names):
        if name.split("/")[-1].startswith("token_ids") and i < len(inputs):
            return i
    for i, array in enumerate(inputs):
        if array.ndim == 2 and array.dtype.kind in "iu":
            return i
    return None


def token_labels(
    batch: ProbeBatch, names: Sequence[str], vocabulary: Vocabulary | None
) -> list[list[str]] | None:
    """Each probe's tokens as text (`vocabulary`, else the ids); None without token ids.

    A token `vocabulary` fails on is labelled by its id.
    """
    probes = batch.inputs
    index = token_id_input(names, probes)
    if index is None:
        return None
    ids = np.asarray(probes[index])
    cache: dict[int, str] = {}

    def label(token: int) -> str:
        if token not in cache:
            text = str(token)
            if vocabulary is not None:
                try:
                    text = str(vocabulary(token))
                except Exception:  # an id the vocabulary does not know
                    text = str(token)
            cache[token] = text
        return cache[token]

    return [[label(int(t)) for t in row] for row in ids.astype(np.int64)]


def padding_lengths(batch: ProbeBatch, names: Sequence[str]) -> list[int] | None:
    """Each probe's number of tokens before padding, from an input named `padding_mask`
    (KerasHub); None without one."""
    for name, array in zip(names, batch.inputs, strict=False):
        if name.split("/")[-1].startswith("padding_mask") and array.ndim == 2:
            mask = np.asarray(array).astype(bool)
            # The last unmasked position + 1 (a left-padded probe keeps its whole length).
            return [int(np.flatnonzero(row)[-1]) + 1 if row.any() else 0 for row in mask]
    return None


def check_strings(value: Any, preprocess: Any, argument: str = "probes") -> None:
    """Refuse a list of strings that are neither image files nor text a tokenizer was given
    for (a numpy array of strings is refused by `read_probe_source` as not numeric)."""
    if isinstance(value, np.ndarray) or not is_text(value) or vocabulary_of(preprocess):
        return
    texts = [str(v) for v in value]
    if any(os.path.exists(t) for t in texts):
        return  # image paths (a missing one is said by the image reader)
    raise ValueError(
        f"Invalid value for argument `{argument}`: strings that are not image files, e.g. "
        f"{texts[0][:40]!r}. For text probes pass the tokenizer that makes token ids: "
        "preprocess=<a KerasHub tokenizer or preprocessor> (anything with `id_to_token`), "
        f"or token ids as an int array ({argument}=token_ids[:4]); for images, paths to "
        "existing files."
    )


def structured_feed(model: Any, batch: ProbeBatch, inputs: ModelInputs) -> Any:
    """`batch.feed()` in the structure the model is called with: a dict by input name for a
    model built on a dict of inputs (KerasHub backbones and the models around them), which
    refuses a list."""
    feed = batch.feed()
    try:
        structure = model.input
    except Exception:  # a subclassed model: no recorded input structure
        return feed
    if isinstance(structure, Mapping) and isinstance(feed, list):
        by_name = dict(zip(inputs.names, feed, strict=True))
        return {key: by_name[str(getattr(t, "name", key))] for key, t in structure.items()}
    return feed
