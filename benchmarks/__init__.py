"""Benchmarks of vxdeploy's serving candidates against PyTorch eager (``make bench``)."""
