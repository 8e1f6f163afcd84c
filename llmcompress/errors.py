"""User-facing errors.

Every error a user can cause (a broken recipe, a missing file, an unsupported model,
incompatible options) is raised as a subclass of :class:`LLMCompressError` with a
message that names what is wrong and how to fix it. The CLI prints these as one
paragraph without a traceback; anything else is a bug and keeps its traceback.
"""


class LLMCompressError(Exception):
    """Base class of the errors a user can fix."""


class ConfigError(LLMCompressError, ValueError):
    """A recipe or method config is invalid.

    Args:
        message: what is wrong and which values are allowed.
        key: the offending key, when there is one.
    """

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class ModelLoadError(LLMCompressError):
    """A model source cannot be found, read or is not supported."""


class DataError(LLMCompressError):
    """Calibration or evaluation text is missing, unreadable or too short."""


class OutputExistsError(LLMCompressError):
    """The output directory exists and overwriting was not requested."""


class MissingDependencyError(LLMCompressError, ImportError):
    """An optional backend is not installed."""


def require(module: str, extra: str | None = None, purpose: str = ""):
    """Import an optional backend, or raise an error that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        hint = f"pip install 'llmcompress[{extra}]'" if extra else f"pip install {module}"
        what = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"The package '{module}' is needed{what} but cannot be imported ({exc}). "
            f"Install it with: {hint}"
        ) from exc
