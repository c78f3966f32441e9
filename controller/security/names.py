"""The role names every Viridian server certificate carries (see pki.py for why clients check
these instead of the dialled address). Apart from pki.py so that clients can name them
without importing the cryptography library."""

from __future__ import annotations

__all__ = ["CONTROLLER_NAME", "ETCD_NAME"]

CONTROLLER_NAME = "viridian-controller"
ETCD_NAME = "viridian-etcd"
