"""stylerun: Gatys et al. neural style transfer on ONNX Runtime alone."""

__version__ = "0.1.0"
