"""Coral: live debugging of production services with eBPF uprobes."""

__version__ = "0.1.0"
