"""Benchmarks (not timed tests): ``python -m benchmarks.run [--device cpu|cuda] [--quick]``.

``reference`` is a training loop in the style of the MiSLAS reference code (DataLoader with PIL
transforms, fp32, contiguous memory) that the library's fast path is measured against;
``synthetic`` makes CIFAR-shaped data and a JPEG image tree, so nothing is downloaded.
"""
