"""Built-in methods; importing this package registers them."""

from . import dtype, rtn  # noqa: F401
from .quant import compressed_tensors_format  # noqa: F401  (registers the writer)
