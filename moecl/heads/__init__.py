"""Classifier heads."""
from moecl.heads.linear import LinearHead
from moecl.heads.prototype import PrototypeHead

__all__ = ["LinearHead", "PrototypeHead"]
