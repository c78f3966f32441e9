"""The etcd key layout: one prefix, one key per object (documented in docs/etcd-layout.md).

Only the store builds or parses keys; everything else names objects by kind and name.
"""

from __future__ import annotations

from dataclasses import dataclass

# Kinds with one key per object directly under the prefix ("<prefix>/<kind>/<name>").
KINDS = ("nodes", "node-leases", "partitions", "bindings", "allocations", "images",
         "contents", "drains", "evictions", "tokens", "replicas")
#: Events live under "<prefix>/~events/": "~" sorts after every kind's first letter, so the
#: replicas' watch of "<prefix>/" up to "<prefix>/~" (``watched_end``) leaves them out. The
#: events are most of what is written, and no replica keeps them in its cache.
EVENTS_DIR = "~events"


@dataclass(frozen=True)
class Keys:
    prefix: str = "/viridian"

    def kind(self, kind: str) -> str:
        """The prefix of every key of one kind, e.g. "/viridian/partitions/"."""
        return f"{self.prefix}/{kind}/"

    def _p(self, kind: str) -> str:
        return self.kind(kind)

    @property
    def nodes(self) -> str:
        return self._p("nodes")

    def node(self, name: str) -> str:
        return self.nodes + name

    @property
    def node_leases(self) -> str:
        return self._p("node-leases")

    def node_lease(self, name: str) -> str:
        return self.node_leases + name

    @property
    def partitions(self) -> str:
        return self._p("partitions")

    def partition(self, name: str) -> str:
        return self.partitions + name

    @property
    def bindings(self) -> str:
        return self._p("bindings")

    def binding(self, name: str) -> str:
        return self.bindings + name

    @property
    def allocations(self) -> str:
        return self._p("allocations")

    def allocation(self, node: str) -> str:
        return self.allocations + node

    def drain(self, node: str) -> str:
        return self._p("drains") + node

    def eviction(self, node: str) -> str:
        return self._p("evictions") + node

    @property
    def images(self) -> str:
        return self._p("images")

    def image(self, name_tag: str) -> str:
        """A tag record: images/NAME:TAG."""
        return self.images + name_tag

    @property
    def contents(self) -> str:
        return self._p("contents")

    def content(self, digest: str) -> str:
        return self.contents + digest

    @property
    def replicas(self) -> str:
        return self._p("replicas")

    def replica(self, identity: str) -> str:
        return self.replicas + identity

    @property
    def events(self) -> str:
        return f"{self.prefix}/{EVENTS_DIR}/"

    @property
    def legacy_events(self) -> str:
        """Where events lived before they left the watched range (moved by the leader)."""
        return self._p("events")

    @property
    def watched_end(self) -> str:
        """The end of the range the replicas watch: everything under the prefix before
        the events."""
        return f"{self.prefix}/~"

    def event(self, event_id: str) -> str:
        return self.events + event_id

    @property
    def tokens(self) -> str:
        return self._p("tokens")

    def token(self, token_id: str) -> str:
        return self.tokens + token_id

    def secret(self, name: str) -> str:
        return f"{self.prefix}/secrets/{name}"

    @property
    def leader(self) -> str:
        return f"{self.prefix}/leader"

    def parse(self, key: str) -> tuple[str, str] | None:
        """(kind, name) of an object key under the prefix, None for anything else."""
        if not key.startswith(self.prefix + "/"):
            return None
        kind, _, name = key[len(self.prefix) + 1:].partition("/")
        if kind not in KINDS or not name or "/" in name:
            return None
        return kind, name

    @staticmethod
    def name_of(key: str) -> str:
        return key.rsplit("/", 1)[-1]
