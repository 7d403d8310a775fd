"""virt-handler and virt-launcher of virtbus: per-node workers that drive libvirt from the log."""
