"""virt-api and virt-controller of virtbus, and the `virtbus` CLI: a client of the bus."""
