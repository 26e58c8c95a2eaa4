"""A guard for frozen dataclasses whose ``__init__`` is written by hand.

The decoders build one object per register and per message; a frozen dataclass's generated
``__init__`` sets each field through ``object.__setattr__``, twice the cost of filling the
instance dictionary directly. The hand-written ones must stay in step with the fields: this
check runs at import and refuses a mismatch.
"""

from __future__ import annotations


def check_init_matches_fields(cls: type) -> None:
    """``cls.__init__`` must take exactly the init fields of the dataclass, in order."""
    code = cls.__init__.__code__  # type: ignore[misc]
    parameters = code.co_varnames[1 : code.co_argcount]
    fields = cls.__dataclass_fields__.values()  # type: ignore[attr-defined]
    names = tuple(field.name for field in fields if field.init)
    if parameters != names:
        raise TypeError(f"{cls.__name__}.__init__{parameters} does not match its fields {names}")
