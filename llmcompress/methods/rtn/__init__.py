from .apply import RTNConfig, apply_rtn

__all__ = ["RTNConfig", "apply_rtn"]
