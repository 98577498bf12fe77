"""``GrowthError``: a state dict or tensor does not fit the growth it is given.

Plan mistakes are ``training.config_base.ConfigError`` (they name a config key); this error is for
data: an unknown tensor key, a missing tensor, a shape that does not match the plan's old shape.
"""


class GrowthError(ValueError):
    pass
