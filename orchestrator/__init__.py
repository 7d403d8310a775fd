"""The control plane (virt-api and virt-controller): intake, controller, read model, virtbus-api,
the web view and the webhook dispatcher; run by `python -m orchestrator` or `virtbus up`."""
