"""Classifier heads."""
from moecl.heads.linear import LinearHead
from moecl.heads.prototype import PrototypeHead
from moecl.heads.text import TextHead

__all__ = ["LinearHead", "PrototypeHead", "TextHead"]
