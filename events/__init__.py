"""The virtbus contract and log: typed commands and events, subjects, the envelope, the VM fold and
the JetStream event store. Everything else in virtbus imports this package; it imports none of ours.
"""
