"""Values as the JSON records stylerun writes hold them: file metadata, a batch manifest, a served job."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def json_value(value: Any) -> Any:
    """`value` as a JSON record holds it: a float that is NaN or infinite becomes null, as strict JSON has
    neither; anything else is kept."""
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
