"""Train, quantization-aware fine-tune and export ConvNets for mobile runtimes."""

__version__ = "0.1.0"
