"""The method registry: ``method.name`` -> ContinualMethod subclass."""
from __future__ import annotations

from moecl.registry import Registry

METHODS: Registry[type] = Registry("method")
register = METHODS.register
