"""The host's link to a device: framing, the protocol tables, byte pipes and the client operations."""
