"""The request pipeline: routing, policies, forwarding with retries, header rewriting."""
