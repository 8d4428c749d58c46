"""Python-backend ``model.py`` files copied verbatim into Triton model repositories."""
