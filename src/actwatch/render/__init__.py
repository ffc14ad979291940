"""Pictures from arrays: PNG, tiles, matplotlib figures, HTML pages (Keras-free)."""
