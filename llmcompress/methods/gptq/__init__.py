from .apply import apply_gptq
from .config import GPTQConfig

__all__ = ["GPTQConfig", "apply_gptq"]
