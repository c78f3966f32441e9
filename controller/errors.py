"""Domain errors of the controller, mapped to gRPC status codes only at the edge (api.py).

    ViridianError
    ├── InvalidArgument       bad input: INVALID_ARGUMENT
    ├── NotFound              unknown object: NOT_FOUND
    ├── AlreadyExists         duplicate name: ALREADY_EXISTS
    ├── FailedPrecondition    wrong phase / in use: FAILED_PRECONDITION
    ├── ResourceExhausted     too large: RESOURCE_EXHAUSTED
    ├── Unimplemented         not offered: UNIMPLEMENTED
    ├── PermissionDenied      the caller may not do this: PERMISSION_DENIED
    └── StoreError            etcd trouble (raised by the store layer only)
        ├── Conflict          a compare in a transaction failed: retry with a fresh read (ABORTED)
        │   └── NotLeader     a leader-only write, and this replica does not lead (any more)
        ├── StoreFull     etcd's NOSPACE alarm: writes refused until an operator frees space
        │                 (RESOURCE_EXHAUSTED, with what to do)
        ├── Compacted     a read at a revision etcd has compacted away (a paged list that
        │                 must start again): ABORTED
        └── StoreUnavailable  etcd cannot be reached: UNAVAILABLE
"""

from __future__ import annotations


class ViridianError(Exception):
    """Base of every error the controller reports to a caller."""


class InvalidArgument(ViridianError):
    pass


class NotFound(ViridianError):
    pass


class AlreadyExists(ViridianError):
    pass


class FailedPrecondition(ViridianError):
    pass


class ResourceExhausted(ViridianError):
    pass


class Unimplemented(ViridianError):
    pass


class PermissionDenied(ViridianError):
    pass


class OutOfRange(ViridianError):
    pass


class Unavailable(ViridianError):
    """A dependency other than etcd (a blob registry, a peer replica) did not answer."""


class StoreError(ViridianError):
    pass


class Conflict(StoreError):
    pass


class NotLeader(Conflict):
    pass


#: What a StoreFull says: etcd keeps refusing writes until an operator acts.
NOSPACE_HINT = (
    "etcd is out of space (its NOSPACE alarm is raised: the database reached "
    "--quota-backend-bytes) and refuses every write until an operator frees space: "
    "compact its history (etcdctl compact REVISION, the current revision from "
    "`etcdctl endpoint status -w json`), defragment every member (etcdctl defrag --cluster), "
    "then disarm the alarm (etcdctl alarm disarm); see docs/operations.md, \"etcd is full\""
)


class StoreFull(StoreError):
    pass


class Compacted(StoreError):
    pass


class StoreUnavailable(StoreError):
    pass


class WatchCompacted(StoreUnavailable):
    """A watch asked for history etcd has compacted away: the watcher must re-read."""
