"""Who may do what: the [access] policy, as a pure decision.

Rights: "list" (services, functions, sessions, events, audit), "attach"
(start and end sessions), "capture" (sessions that capture argument or
return values: a stronger right than timing) and "profile" (sample a
service's on-CPU stacks: which code runs, not what values it holds). Each is a list of unix user
names, @group names, and key:NAME for a peer on tcp whose CURVE key is
NAME.key in the colony's allow-list (key:* for any such key). Root (on ipc)
may do everything."""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Callable, Iterable
from typing import Any

from coral import expr
from coral.daemon.config import AccessConfig
from coral.daemon.errors import PermissionDenied
from coral.daemon.server import Peer

LIST_METHODS = frozenset({"ListServices", "ListFunctions", "ListDebugSessions", "QueryUprobeEvents", "ListAudit"})
ATTACH_METHODS = frozenset({"AttachUprobe", "DetachUprobe"})


def unix_identity(uid: int) -> tuple[str, set[str]]:
    """(user name, group names) of a uid; the name is "uid:N" if unknown."""
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return f"uid:{uid}", set()
    gids = os.getgrouplist(user.pw_name, user.pw_gid)
    names = set()
    for gid in gids:
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:
            continue
    return user.pw_name, names


def rights_needed(method: str, request: Any) -> list[str]:
    if method in LIST_METHODS:
        return ["list"]
    if method in ATTACH_METHODS:
        config = getattr(request, "config", None)
        capture = config is not None and (config.capture_args or config.capture_return
                                          or condition_reads_values(config.predicate)
                                          or bool(config.count_by))  # keys are values
        return ["attach", "capture"] if capture else ["attach"]
    if method == "ProfileCpu":
        return ["profile"]
    return []


def values_asked(request: Any) -> str:
    """What an attach reads of the target's values beyond capture flags, for
    its audit row: `count_by 'KEY'` (a key is a value); "" for anything else."""
    config = getattr(request, "config", None)
    key = getattr(config, "count_by", "") if config is not None else ""
    return f"count_by {key!r}" if key else ""


def condition_reads_values(text: str) -> bool:
    """A filter on values (--where) reveals them too: counting the calls
    that pass `amount > N` is a binary search for amount. A condition on
    only `duration` and `raised` reveals no value, native or Python alike;
    nor does --errors-only, which is not part of the text. One that does
    not parse is taken to read values."""
    if not text:
        return False
    try:
        return expr.reads_values(expr.parse_condition(text))
    except expr.ExprError:
        return True


def check(policy: AccessConfig, peer: Peer, method: str, request: Any,
          identify: Callable[[int], tuple[str, set[str]]] = unix_identity) -> None:
    """Raise PermissionDenied, naming the missing right, unless the peer may."""
    for right in rights_needed(method, request):
        why = refusal(policy, peer, right, identify)
        if why:
            raise PermissionDenied(why)


def refusal(policy: AccessConfig, peer: Peer, right: str,
            identify: Callable[[int], tuple[str, set[str]]] = unix_identity) -> str:
    """Why the peer does not hold `right` ("" if it does)."""
    if peer.uid == 0 or peer.trusted:
        return ""  # root, or a request the colony already checked
    admits: tuple[str, ...] = getattr(policy, right)
    if peer.key:  # a CURVE peer on tcp, admitted by the allow-list: known by its key's name
        if f"key:{peer.key}" in admits or "key:*" in admits:
            return ""
        return f"key {peer.key} may not {right} (needs [access] {right}, which admits {', '.join(admits) or 'nobody but root'})"
    if peer.uid is None:
        return "the peer's identity is unknown (peer credentials unavailable)"
    user, groups = identify(peer.uid)
    if user in admits or any(f"@{g}" in admits for g in groups):
        return ""
    return f"user {user} may not {right} (needs [access] {right}, which admits {', '.join(admits) or 'nobody but root'})"


WITHHELD = "<withheld>"


def values_for(policy: AccessConfig, peer: Peer, owner: str, calls: Iterable[Any],
               identify: Callable[[int], tuple[str, set[str]]] = unix_identity) -> None:
    """Captured values are for the session's owner and holders of `capture`:
    for anyone else, each non-empty argument value, return value and error
    message of these Calls becomes <withheld> (in place)."""
    if (owner and peer.who == owner) or not refusal(policy, peer, "capture", identify):
        return
    for call in calls:
        for arg in call.args:
            if arg.value:
                arg.value = WITHHELD
        ret = call.return_value
        if ret.value:
            ret.value = WITHHELD
        if ret.error_message:
            ret.error_message = WITHHELD
