"""MCP awareness: session affinity through sealed session ids, JSON-RPC peeking, header checks, Origin policy.

sessions.py, jsonrpc.py and origin.py are sans-I/O; keys.py finds the session key; step.py is the pipeline step.
"""
