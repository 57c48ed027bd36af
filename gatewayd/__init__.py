"""gatewayd: the daemon — CLI, lifecycle and supervision, router, HTTP surface."""

__version__ = "0.1.0"
