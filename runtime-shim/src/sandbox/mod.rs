//! Sandboxes: VM backends (husk-vmm, QEMU), initramfs, agent client. See issue 4.
