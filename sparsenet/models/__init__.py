"""Model zoo: one file per family, each builder registered with `@register_model`.

Every builder takes `num_classes` and `input_shape` (C, H, W) keyword arguments, so the
dataset config fixes both by interpolation.
"""

from sparsenet._registry import Registry

MODELS = Registry("model", __name__)
register_model = MODELS.register
list_models = MODELS.names
get_model = MODELS.build

__all__ = ["MODELS", "get_model", "list_models", "register_model"]
