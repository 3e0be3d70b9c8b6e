//! NVMe-oF: TCP transport, fabrics commands, controllers, subsystems, discovery.
