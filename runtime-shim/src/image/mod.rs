//! Image store: layout, import, layers, erofs disks. See issue 3.
