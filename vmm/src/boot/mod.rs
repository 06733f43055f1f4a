//! Kernel loading (linux-loader), PVH start info / boot params, e820, command line.
