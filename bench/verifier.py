"""How much of the BPF verifier's budget each of the agent's programs uses:
the instructions the verifier processed to accept it (the kernel's
bpf_prog_info.verified_insns), against its limit of 1,000,000 a program.
coral_hit is the one near it: a change to bpf/coral_probes.c that adds
work inside a loop over slots shows here first (as E2BIG, "Argument list
too long", when the agent loads it).

    sudo .venv/bin/python bench/verifier.py
"""

from __future__ import annotations

import ctypes
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coral.agentd.engine import ProbeEngine

LIMIT = 1_000_000
PROGRAMS = ("coral_hit", "coral_return", "coral_python", "coral_where", "coral_count", "coral_stack")
BPF_OBJ_GET_INFO_BY_FD = 15
SYS_BPF = 321  # x86-64
INFO_SIZE = 256
VERIFIED_INSNS_AT = 216  # offsetof(struct bpf_prog_info, verified_insns), linux/bpf.h (Linux 5.16 and later)


def verified_insns(fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    info = ctypes.create_string_buffer(INFO_SIZE)
    attr = ctypes.create_string_buffer(struct.pack("IIQ", fd, INFO_SIZE, ctypes.addressof(info)), 16)
    if libc.syscall(SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, attr, 16) != 0:
        raise OSError(ctypes.get_errno(), "BPF_OBJ_GET_INFO_BY_FD")
    return int(struct.unpack_from("I", info, VERIFIED_INSNS_AT)[0])


def main() -> int:
    engine = ProbeEngine(64)
    print(f"{'program':<14} {'verified':>10} {'of the limit':>13}")
    for name in PROGRAMS:
        n = verified_insns(engine.program_fd(name))
        print(f"{name:<14} {n:>10,} {n / LIMIT:>12.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
