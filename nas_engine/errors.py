"""The one shape of a bad-input error in the engine: which field, and why.

Every validator (genotype, space, spec, recipe, data set, macro, strategy settings)
raises a subclass, so a form, the REST API or the CLI can point at the offending field
without knowing which module complained.
"""

from __future__ import annotations


class FieldError(ValueError):
    """Bad input. `field` is the dotted path of the offending value ("" for the whole)."""

    def __init__(self, field: str, reason: str):
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}" if field else reason)

    def __reduce__(self):  # raised inside worker processes, so it must survive pickling
        return (type(self), (self.field, self.reason))
