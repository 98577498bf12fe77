"""``GrowthError``: a state dict or tensor does not fit the growth it is given.

Plan mistakes are ``training.config_base.ConfigError`` (they name a config key); this error is for
data: an unknown tensor key, a missing tensor, a shape that does not match the plan's old shape.
"""

from training.errors import FLMError


class GrowthError(FLMError, ValueError):
    """Tensors or a state dict do not fit the growth they are given."""
