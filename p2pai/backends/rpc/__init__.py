"""Models whose layers live on llama.cpp RPC workers of the swarm.

Workers run llama.cpp's RPC server on loopback behind a token-authenticated
relay (relay.py); a node places layers on them (placement.py) and runs the
model in its own process (backends/process.py, like every model) so a dying worker, which aborts
llama.cpp, cannot take the node down.
"""
