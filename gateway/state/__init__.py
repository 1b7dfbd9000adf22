"""A worker's side of the shared state: leases, breaker view, target overrides, kept current over the bus."""
