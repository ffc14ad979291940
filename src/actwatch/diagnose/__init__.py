"""Decisions from checks: alerts and their wording, memory, update ratios, revival (Keras-bound)."""
