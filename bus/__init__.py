"""The bus I/O: the event store, readers, the lean NATS paths, provisioning,
the embedded server, tunnels, telemetry, and the read side shared by processes."""
