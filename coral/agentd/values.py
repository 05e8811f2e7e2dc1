"""Turn raw register values into typed, readable argument and return values."""

from __future__ import annotations

_SIZES = {"char": 1, "short": 2, "int": 4, "long": 8, "long long": 8, "_Bool": 1, "bool": 1}


def format_register(value: int, type_name: str) -> str:
    """Format a 64-bit register as the C type DWARF names (best effort for
    scalars; pointers in hex). Unknown types: hex."""
    t = type_name.strip()
    if not t or "*" in t or t.endswith("]"):
        return f"{value:#x}"
    if t in ("_Bool", "bool"):
        return "true" if value & 0xFF else "false"
    words = t.replace("signed ", "").replace(" int", "").strip() if t not in ("int", "unsigned int") else t
    unsigned = t.startswith("unsigned") or t in ("size_t", "uintptr_t") or t.startswith("uint")
    base = words.replace("unsigned", "").strip() or "int"
    size = _SIZES.get(base)
    if size is None:
        for prefix, bits in (
            ("int8", 1),
            ("int16", 2),
            ("int32", 4),
            ("int64", 8),
            ("uint8", 1),
            ("uint16", 2),
            ("uint32", 4),
            ("uint64", 8),
            ("size_t", 8),
            ("ssize_t", 8),
        ):
            if t.startswith(prefix) or t.startswith("u" + prefix):
                size = bits
                break
    if size is None:
        return f"{value:#x}"
    v = value & ((1 << (8 * size)) - 1)
    if not unsigned and v >= 1 << (8 * size - 1):
        v -= 1 << (8 * size)
    return str(v)
