"""Classifier heads."""
from moecl.heads.masked_linear import MaskedLinearHead
from moecl.heads.prototype import PrototypeHead

__all__ = ["MaskedLinearHead", "PrototypeHead"]
