"""Symbol names as people write them. Mangled symbols are read by LLVM's
demanglers, through pycxxfilt: C++ (Itanium, as GCC and Clang mangle),
Rust v0 (`_R...`), and Rust's legacy symbols, which are Itanium names whose
path segments escape punctuation (`$LT$` for `<`) and end in a hash; we
undo those escapes and drop the hash, as rustc's own demangler does. A
symbol they do not read stays as it is. We only decide which names a user
may write for a symbol:

- its demangled name: `pay::fee(long, int)`, `fees::pay::fee` (Rust);
- the same without its parameter list: `pay::fee`;
- and without template arguments: `pay::total` for `pay::total<int>(...)`.

Several symbols may share a short name (overloads, template or generic
instantiations): such a name is refused with the candidates."""

from __future__ import annotations

import functools
import re
from types import ModuleType

pycxxfilt: ModuleType | None
try:
    import pycxxfilt
except ImportError:  # the SDK's own distribution leaves it out (docs/sdk-guide.md): names stay mangled
    pycxxfilt = None

_RUST_LEGACY = re.compile(r"^_ZN.*17h[0-9a-f]{16}E(\.llvm\.\d+)?$")
_RUST_HASH = re.compile(r"::h[0-9a-f]{16}$")
_RUST_ESCAPES = {"SP": "@", "BP": "*", "RF": "&", "LT": "<", "GT": ">", "LP": "(", "RP": ")", "C": ","}
_RUST_ESCAPE = re.compile(r"\$(SP|BP|RF|LT|GT|LP|RP|C|u[0-9a-f]{2,6})\$")
_QUALIFIERS = (" const", " volatile", " &&", " &", " noexcept")
_CLONE = re.compile(r" \(\.[\w.]+\)$|\s*\[clone [^\]]*\]$")  # a compiler's copy: "fee(long) (.cold)"


def _rust_legacy(text: str) -> str:
    """Undo a legacy Rust path's escapes: `$LT$` is `<`, `$u7b$` is `{`, `..` is `::`."""
    text = _RUST_ESCAPE.sub(lambda m: _RUST_ESCAPES.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), text)
    return text.replace("..", "::")


@functools.lru_cache(maxsize=65536)
def demangle(symbol: str) -> str | None:
    """The symbol's demangled name, or None if it is not a mangled name
    (a C or Go symbol) or cannot be read. Rust hashes are dropped."""
    if not symbol.startswith(("_Z", "_R")) or pycxxfilt is None:
        return None
    try:
        name: str | None = pycxxfilt.demangle(symbol)
    except ValueError:  # a name LLVM's demangler cannot read (it raises for some, returns None for others)
        return None
    if not name or name == symbol:
        return None
    if _RUST_LEGACY.match(symbol):
        name = _RUST_HASH.sub("", _rust_legacy(name.split(" (.llvm.")[0]))
    return name


def _matching_open(text: str, close: int, opening: str, closing: str) -> int:
    """Index of the bracket that opens the one closing at `close`, or -1."""
    depth = 0
    for i in range(close, -1, -1):
        if text[i] == closing:
            depth += 1
        elif text[i] == opening:
            depth -= 1
            if depth == 0:
                return i
    return -1


def without_parameters(name: str) -> str:
    """`pay::Account::charge(long) const` -> `pay::Account::charge`; a
    template function's return type goes too (`int pay::total<int>(...)` ->
    `pay::total<int>`)."""
    text = _CLONE.sub("", name)
    stripped = True
    while stripped:
        stripped = False
        for q in _QUALIFIERS:
            if text.endswith(q):
                text, stripped = text[: -len(q)], True
    if not text.endswith(")"):
        return name
    start = _matching_open(text, len(text) - 1, "(", ")")
    if start <= 0:
        return name
    head, depth = text[:start], 0
    for i in range(len(head) - 1, -1, -1):  # a return type ends at the last space outside <...>
        if head[i] in ">)":
            depth += 1
        elif head[i] in "<(":
            depth -= 1
        elif head[i] == " " and depth == 0:
            return head[i + 1:]
    return head


def without_templates(name: str) -> str:
    """`pay::total<int>` -> `pay::total` (only a trailing template argument list)."""
    if not name.endswith(">") or name.endswith("operator>") or name.endswith("operator>>"):
        return name
    start = _matching_open(name, len(name) - 1, "<", ">")
    bare = name[:start].removesuffix("::") if start > 0 else name  # Rust v0: fees::total::<u32>
    return bare or name


_AROUND_PUNCTUATION = re.compile(r"\s*([(),<>*&\[\]]|::)\s*")


def spelling(name: str) -> str:
    """`name` with the spaces that do not change its meaning taken out, so
    that `pay::fee(long,int)` and `pay::fee( long, int )` find what the
    demangler prints as `pay::fee(long, int)`."""
    return _AROUND_PUNCTUATION.sub(r"\1", " ".join(name.split()))


_ABI_TAG = re.compile(r"\[abi:[A-Za-z0-9_]+\]")  # `pay::name_of[abi:cxx11](int)`: a function returning std::string


def names_for(demangled: str) -> list[str]:
    """The names a user may write for a symbol with this demangled name,
    longest first; each also without GCC's ABI tags."""
    if _CLONE.search(demangled):  # a compiler's copy (.cold, .isra, .constprop): not what a user means by the name
        return [demangled]
    short = without_parameters(demangled)
    names = [demangled, short, without_templates(short)]
    names += [_ABI_TAG.sub("", n) for n in names]
    return [n for n in dict.fromkeys(names) if n]
