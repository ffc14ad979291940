"""The callback and each fit: arguments, schedule, steps, distribution (Keras-bound)."""
