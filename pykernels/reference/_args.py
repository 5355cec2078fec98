"""Argument helpers shared by the 2-D references (plain Python: no imports at all)."""


def pair(name, v):
    """An int or a 1- or 2-sequence of ints -> (vH, vW)."""
    if isinstance(v, (tuple, list)):
        if len(v) == 1:
            v = (v[0], v[0])
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)
