"""The one exception of the netns runner."""


class ClusterError(Exception):
    """A compose file this runner cannot run, a host command that failed, or a service that
    did not start or become healthy in time."""
