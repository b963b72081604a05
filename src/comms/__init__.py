"""comms: multi-tenant bulk SMS and email."""
