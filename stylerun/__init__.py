"""stylerun: Gatys et al. neural style transfer on ONNX Runtime alone.

    import stylerun
    image = stylerun.transfer("photo.jpg", "painting.jpg", size=512, iterations=300)
    image.save("out.png")
"""

from stylerun.api import stylize_video, transfer
from stylerun.engine.loss import StyleLoss
from stylerun.engine.optimizers import Progress, Result, optimize
from stylerun.engine.run import Job, Listener, Outcome, run
from stylerun.errors import InputError, NumericError, OptionError, StylerunError, WeightsError
from stylerun.options import TransferOptions
from stylerun.version import __version__

__all__ = [
    "InputError", "Job", "Listener", "NumericError", "OptionError", "Outcome", "Progress", "Result", "StyleLoss",
    "StylerunError", "TransferOptions", "WeightsError", "__version__", "optimize", "run", "stylize_video", "transfer",
]
