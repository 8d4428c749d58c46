"""A zoo of the model shapes users bring, built from real libraries: see :mod:`tests.zoo.models`."""
