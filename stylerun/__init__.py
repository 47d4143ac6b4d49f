"""stylerun: Gatys et al. neural style transfer on ONNX Runtime alone.

    import stylerun
    image = stylerun.transfer("photo.jpg", "painting.jpg", size=512, iterations=300)
    image.save("out.png")
"""

from .api import stylize_video, transfer
from .engine import Job, Listener, Outcome, run
from .errors import InputError, NumericError, OptionError, StylerunError, WeightsError
from .loss import StyleLoss
from .optimizers import Progress, Result, optimize
from .options import TransferOptions
from .version import __version__

__all__ = [
    "InputError", "Job", "Listener", "NumericError", "OptionError", "Outcome", "Progress", "Result", "StyleLoss",
    "StylerunError", "TransferOptions", "WeightsError", "__version__", "optimize", "run", "stylize_video", "transfer",
]
