"""The virtbus contract, pure: typed commands and events, subjects, the envelope and hash chain,
the folds (VM, node, replica set, volume), the manifests in and the kubectl shapes out, the API's
wire types. No I/O: the bus under it (store, readers, the embedded server) is `bus/`. Every
package of virtbus imports this one; it imports none of ours.
"""
