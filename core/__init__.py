"""The shared low-level pieces: settings, data, model sources, training, quantization, evaluation and atomic I/O.

Nothing here imports `converters`, `benchmarks` or `pipeline`: those build on this package.
"""
