"""Code shared by the receiver and the workers: settings, topology, domain types, the store."""
