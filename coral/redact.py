"""What Coral never shows: one set of rules for the SDK (in the process)
and the agent (for native values), see docs/security.md "Redaction".

Names. An argument, field or dict key is secret when its name, split into
lowercase words (at `_`, `-`, `.`, spaces, digits and camelCase humps),
has a listed term as one word or as two adjacent words run together
(`api_key`, `apiKey` and `apikey` all give "apikey"), or has a word that
begins or ends with a listed term of five letters or more (`mypassword`,
`tokenExpiry`). So `user_pw`, `apiToken` and `Authorization` are secret;
`session_id`, `author` and `oauth_url` are not.

Values. Whatever its name, text that holds a card number (13 to 19 digits,
spaces or dashes between them, passing Luhn), a bearer token, a JWT, or
`key=value` / `key: value` whose key is a secret name has that part
replaced with `<redacted>`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

REDACTED = "<redacted>"

DEFAULT_NAMES: tuple[str, ...] = (
    "password", "passwd", "pw", "secret", "token", "api_key", "apikey", "authorization", "bearer", "cookie",
    "credential", "private_key", "card",
)

_HUMP = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
# Bearer tokens, JWTs and card-number candidates, found in one scan.
_SECRET_VALUE = re.compile(
    r"(?i:\bbearer\s+[A-Za-z0-9._~+/=-]+)"
    r"|\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"
    r"|(?P<card>(?<![0-9])[0-9](?:[ -]?[0-9]){12,30}(?![0-9]))"
)
_KEY = re.compile(r"""(?P<key>[A-Za-z_][A-Za-z0-9_.-]*)["']?\s*[=:]\s*""")
_VALUE = re.compile(r""""[^"]*"|'[^']*'|[^\s,;&'"=)}]+""")


NAME_MATCH_MAX = 128  # bytes (UTF-8) of a name compared, as in the C extension


NAME_WORDS_MAX = 32  # words of a name compared (the same in the C extension)


def words(name: str) -> list[str]:
    """A name's lowercase words, as the C extension splits its first 128 bytes."""
    head = name.encode("utf-8", "surrogatepass")[:NAME_MATCH_MAX].decode("utf-8", "ignore")
    return [w.lower() for w in _HUMP.findall(head)[:NAME_WORDS_MAX]]


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _secret_value(m: re.Match[str]) -> str:
    card = m.group("card")
    if card is None:
        return REDACTED
    # The run may have taken in a group that follows the number ("… 1111 12/26"):
    # try it whole, then without its last groups, down to 13 digits.
    for end in [len(card), *(i for i in range(len(card) - 1, 0, -1) if card[i] in " -")]:
        head = card[:end]
        digits = head.replace(" ", "").replace("-", "")
        if len(digits) < 13:
            break
        if len(digits) <= 19 and luhn_ok(digits):
            return REDACTED + card[end:]
    return card


@dataclass(frozen=True)
class Rules:
    names: tuple[str, ...] = DEFAULT_NAMES
    _terms: frozenset[str] = field(init=False, repr=False, compare=False)
    _long: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _seen: dict[str, bool] = field(init=False, repr=False, compare=False)  # names asked before (the agent asks per call)

    def __post_init__(self) -> None:
        terms = frozenset("".join(words(n)) for n in self.names if words(n))
        object.__setattr__(self, "_terms", terms)
        object.__setattr__(self, "_long", tuple(t for t in terms if len(t) >= 5))
        object.__setattr__(self, "_seen", {})

    @property
    def terms(self) -> tuple[str, ...]:
        """The listed names as the rule compares them: lowercase words run
        together (what the SDK's C side is given)."""
        return tuple(sorted(self._terms))

    def is_secret_name(self, name: str) -> bool:
        known = self._seen.get(name)
        if known is None:
            if len(self._seen) >= 4096:
                self._seen.clear()
            known = self._seen[name] = self._match(name)
        return known

    def _match(self, name: str) -> bool:
        ws = words(name)
        if any(w in self._terms for w in ws) or any(a + b in self._terms for a, b in itertools.pairwise(ws)):
            return True
        return any(w.startswith(t) or w.endswith(t) for w in ws for t in self._long)

    def flags(self, names: Iterable[str]) -> bytes:
        """One byte per name, 1 if it is secret (the SDK's C side takes these)."""
        return bytes(self.is_secret_name(n) for n in names)

    def text(self, s: str) -> str:
        """`s` with every secret-looking part replaced by <redacted>."""
        if not s:
            return s
        s = _SECRET_VALUE.sub(_secret_value, s)
        if "=" not in s and ":" not in s:
            return s
        return self._key_values(s)

    def _key_values(self, s: str) -> str:
        """`key=value` and `key: value` whose key is a secret name."""
        out, pos = [], 0
        for m in _KEY.finditer(s):
            if m.start() < pos or not self.is_secret_name(m.group("key")):
                continue
            v = _VALUE.match(s, m.end())
            if v is None or s.startswith(REDACTED, m.end()):
                continue
            out += [s[pos : m.end()], REDACTED]
            pos = v.end()
        return "".join(out) + s[pos:]

    def value(self, name: str, shown: str) -> str:
        """An argument's or field's shown value: all of it if its name is secret."""
        return REDACTED if self.is_secret_name(name) else self.text(shown)
