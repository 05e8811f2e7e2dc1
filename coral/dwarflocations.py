"""Where DWARF says an argument is at a function's first instruction.

Optimized code describes a parameter's place with a location list: a
register (or registers, one per piece) for each range of the code. At the
function's entry the entry covering that address names the registers the
caller filled, which is where the probe reads. An optimizer that changed
the function's signature (LLVM removing an unused argument, or the unused
half of a `&str`) leaves the ABI's order wrong; this is right then."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from elftools.dwarf.dwarf_expr import DWARFExprParser
from elftools.dwarf.locationlists import BaseAddressEntry, LocationEntry, LocationExpr, LocationParser

MISSING = -1  # a piece with no location: that part of the value is not anywhere (optimized out)


@dataclass(frozen=True)
class OnStack:
    """DWARF places the value in the caller's part of the stack: this many
    bytes past the return address (a System V argument passed in memory)."""

    offset: int


@dataclass(frozen=True)
class FrameBase:
    """A function's DW_AT_frame_base, as far as an offset from it can be
    turned into a place past the return address: the CFA itself, or the
    stack pointer (RSP) with `cfa_offset` from it to the CFA where the
    function's body runs (from its call frame information)."""

    is_cfa: bool
    cfa_offset: int = 0

    def stack_place(self, offset: int, at_entry: bool) -> OnStack | None:
        """Where DW_OP_fbreg `offset` lands, if in the caller's frame. At
        the first instruction (a location list's entry covering it) the
        stack pointer is 8 below the CFA, whatever the body's frame."""
        past = offset if self.is_cfa else offset - (8 if at_entry else self.cfa_offset)
        return OnStack(past) if past >= 0 else None
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

    def registers_at(self, param: Any, pc: int, frame: FrameBase | None = None) -> tuple[int, ...] | OnStack | None:
        """The registers holding `param`'s parts (DWARF numbers, MISSING for
        a part that is nowhere) when the code at `pc` runs; OnStack where
        DWARF puts it in the caller's part of the stack (an offset from the
        frame base, `frame`, that lands at or above the CFA: an incoming
        argument, there from the first instruction); ELSEWHERE where DWARF
        says it is somewhere else there: a location list's entry for `pc`
        that is neither, or a place below the CFA when the frame base is the
        CFA; None where DWARF does not say (no entry for `pc`, or a place in
        a frame the prologue has not set up yet)."""
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
            if found is None and frame is not None and len(expr) == 1 and expr[0].op_name == "DW_OP_fbreg":
                placed = frame.stack_place(expr[0].args[0], at_entry=False)
                return placed if placed is not None else ELSEWHERE if frame.is_cfa else None
            if found is None and frame is not None and frame.is_cfa and expr and expr[0].op_name == "DW_OP_fbreg":
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
                    expr = self._exprs.parse_expr(entry.loc_expr)
                    found = _registers(expr)
                    if found is None and frame is not None and len(expr) == 1 and expr[0].op_name == "DW_OP_fbreg":
                        placed = frame.stack_place(expr[0].args[0], at_entry=True)
                        return placed if placed is not None else ELSEWHERE
                    return ELSEWHERE if found is None else found
        return None
