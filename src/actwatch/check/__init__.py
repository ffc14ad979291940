"""One check's device work: layers, capture, probes, one compiled call (Keras-bound)."""
