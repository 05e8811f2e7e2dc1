"""Where DWARF says an argument is at a function's first instruction.

Optimized code describes a parameter's place with a location list: a
register (or registers, one per piece) for each range of the code. At the
function's entry the entry covering that address names the registers the
caller filled, which is where the probe reads. An optimizer that changed
the function's signature (LLVM removing an unused argument, or the unused
half of a `&str`) leaves the ABI's order wrong; this is right then."""

from __future__ import annotations

from typing import Any

from elftools.dwarf.dwarf_expr import DWARFExprParser
from elftools.dwarf.locationlists import BaseAddressEntry, LocationEntry, LocationExpr, LocationParser

MISSING = -1  # a piece with no location: that part of the value is not anywhere (optimized out)
ELSEWHERE = ()  # DWARF places it at that address, but not in registers (memory, a computed value)
BY_ADDRESS = 1 << 16  # added to a register number: the register holds the value's address (DW_OP_bregN 0)


def _registers(expr: list[Any]) -> tuple[int, ...] | None:
    """The DWARF register numbers of an expression made only of registers
    (DW_OP_reg0..31, DW_OP_regx), one per DW_OP_piece if it has pieces;
    a register plus BY_ADDRESS for a value at the address it holds; None
    for any other expression (memory elsewhere, a computed value)."""
    parts: list[int] = []
    pending: int | None = None
    if len(expr) == 1 and expr[0].op_name.startswith("DW_OP_breg") and expr[0].args[-1] == 0:
        # In memory at the address a register holds: an object passed by
        # (invisible) reference, such as a Rust String or a C++ std::string.
        op = expr[0]
        return ((op.args[0] if op.op_name == "DW_OP_bregx" else int(op.op_name.removeprefix("DW_OP_breg"))) + BY_ADDRESS,)
    for op in expr:
        name = op.op_name
        if name.startswith("DW_OP_reg") and name != "DW_OP_regval_type":
            if pending is not None:
                return None
            pending = op.args[0] if name == "DW_OP_regx" else int(name.removeprefix("DW_OP_reg"))
        elif name == "DW_OP_piece":
            parts.append(MISSING if pending is None else pending)
            pending = None
        else:
            return None
    if parts:
        return None if pending is not None else tuple(parts)
    return (pending,) if pending is not None else None


class EntryLocations:
    """Reads parameters' places at an address, for one DWARF file."""

    def __init__(self, dwarf: Any) -> None:
        self._dwarf = dwarf
        self._exprs = DWARFExprParser(dwarf.structs)
        lists = dwarf.location_lists()
        self._parser = LocationParser(lists) if lists is not None else None

    def has_list(self, param: Any) -> bool:
        """Its place is a location list: the code is optimized, and DWARF
        says where the value is at each address (so a place other than
        registers at the entry, or none, is where it really is)."""
        attr = param.attributes.get("DW_AT_location")
        return attr is not None and attr.form in ("DW_FORM_sec_offset", "DW_FORM_loclistx", "DW_FORM_data4",
                                                  "DW_FORM_data8")

    def registers_at(self, param: Any, pc: int, cfa_frame: bool = False) -> tuple[int, ...] | None:
        """The registers holding `param`'s parts (DWARF numbers, MISSING for
        a part that is nowhere) when the code at `pc` runs; ELSEWHERE where
        DWARF says it is somewhere else there: a location list's entry for
        `pc` that is not registers, or a place relative to the frame base
        when that is the CFA (`cfa_frame`: valid from the first
        instruction); None where DWARF does not say (no entry for `pc`, or
        a place relative to a frame the prologue has not set up yet)."""
        attr = param.attributes.get("DW_AT_location")
        if attr is None or self._parser is None:
            return None
        cu = param.cu
        try:
            loc = self._parser.parse_from_attribute(attr, cu["version"], die=param)
        except (KeyError, ValueError, AttributeError):
            return None
        if isinstance(loc, LocationExpr):
            expr = self._exprs.parse_expr(loc.loc_expr)
            found = _registers(expr)
            if found is None and cfa_frame and expr and expr[0].op_name == "DW_OP_fbreg":
                return ELSEWHERE
            return found
        top = cu.get_top_DIE()
        base = top.attributes["DW_AT_low_pc"].value if "DW_AT_low_pc" in top.attributes else 0
        for entry in loc:
            if isinstance(entry, BaseAddressEntry):
                base = entry.base_address
            elif isinstance(entry, LocationEntry):
                begin, end = (entry.begin_offset, entry.end_offset) if entry.is_absolute else \
                    (base + entry.begin_offset, base + entry.end_offset)
                if begin <= pc < end:
                    found = _registers(self._exprs.parse_expr(entry.loc_expr))
                    return ELSEWHERE if found is None else found
        return None
