"""Answer for the whole swarm: choose this node or a peer for each request,
forward it over the authenticated peer endpoint, and fail over."""
