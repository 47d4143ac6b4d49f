"""stylerun: Gatys et al. neural style transfer on ONNX Runtime alone.

    import stylerun
    image = stylerun.transfer("photo.jpg", "painting.jpg", size=512, iterations=300)
    image.save("out.png")
"""

__version__ = "0.1.0"

from .errors import InputError, StylerunError, WeightsError  # noqa: E402
from .stylize import Progress, Result, StyleLoss, optimize, transfer  # noqa: E402

__all__ = [
    "InputError", "Progress", "Result", "StyleLoss", "StylerunError", "WeightsError", "__version__", "optimize",
    "transfer",
]
