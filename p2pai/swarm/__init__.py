"""This node's place in the swarm: what it announces and what it knows of the others.

It sits between the overlay (membership, announcements) and the layers that use
the swarm (the API's /api/p2p, routing): they read typed `SwarmNode`s and never
parse announcement payloads themselves.
"""
