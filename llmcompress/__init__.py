"""llmcompress: make Hugging Face causal language models smaller and faster.

The public API::

    from llmcompress import compress, Recipe
    result = compress("smollm2-135m", "quickstart", output_dir="out/quickstart")
    print(result.table())
"""

from .api import Result, compress
from .data import CalibrationConfig, EvaluationConfig
from .errors import ConfigError, DataError, LLMCompressError, ModelLoadError, OutputExistsError
from .models import load as load_model
from .recipe import Recipe
from .registry import available_methods, get_method

__all__ = [
    "compress", "Result", "Recipe", "CalibrationConfig", "EvaluationConfig", "load_model",
    "available_methods", "get_method", "LLMCompressError", "ConfigError", "DataError",
    "ModelLoadError", "OutputExistsError",
]
__version__ = "0.1.0"
