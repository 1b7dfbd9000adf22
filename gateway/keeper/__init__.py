"""The state keeper: a process of its own (process.py) that owns the bus and the state the workers share
(state.py), with its Redis level for rate-limiting's policy redis (redis_level.py)."""
