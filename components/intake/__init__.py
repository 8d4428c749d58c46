"""Stage 0: resolve the model and data, read the model's signature, check the data against it."""
