"""Constructor-argument checks shared by the nn modules: each failure is a ValueError naming the
argument, its value and what is accepted, raised before any parameter is allocated (torch's
own errors for such sizes, "negative dimension" or an assertion, name neither)."""

from __future__ import annotations


def check_size(name: str, value, minimum: int = 1) -> int:
    """``value`` as a size: an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r}; expected an int >= {minimum}")
    return value
