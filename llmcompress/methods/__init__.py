"""Built-in methods; importing this package registers them."""

from . import bnb, distill, dtype, gptq, prune, rtn, sparsegpt, structured, wanda  # noqa: F401
from .quant import compressed_tensors_format, gptq_format  # noqa: F401  (register the writers)
