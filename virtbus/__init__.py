"""The `virtbus` command: the client verbs, the embedded stack (`up`)
and the benchmarks assembled; the one place that starts both sides."""
