//! Where the initrd goes: as high as possible in low RAM (so the kernel's
//! own early allocations below it have room), page aligned, and above the
//! end of the kernel image.

use thiserror::Error;

const PAGE_SIZE: u64 = 4096;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum InitrdError {
    #[error("initrd is empty")]
    Empty,
    #[error("initrd of {size} bytes does not fit in low RAM between the kernel end {kernel_end:#x} and {low_ram_end:#x}; give the VM more memory")]
    TooLarge {
        size: u64,
        kernel_end: u64,
        low_ram_end: u64,
    },
}

/// Guest address for an initrd of `size` bytes.
pub fn initrd_address(size: u64, kernel_end: u64, low_ram_end: u64) -> Result<u64, InitrdError> {
    if size == 0 {
        return Err(InitrdError::Empty);
    }
    let too_large = InitrdError::TooLarge {
        size,
        kernel_end,
        low_ram_end,
    };
    let start = low_ram_end.checked_sub(size).ok_or(too_large.clone())? & !(PAGE_SIZE - 1);
    let kernel_end_aligned = kernel_end
        .checked_add(PAGE_SIZE - 1)
        .ok_or(too_large.clone())?
        & !(PAGE_SIZE - 1);
    if start < kernel_end_aligned {
        return Err(too_large);
    }
    Ok(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        let top = 256 << 20;
        let addr = initrd_address(5000, 32 << 20, top).unwrap();
        assert_eq!(addr % PAGE_SIZE, 0);
        assert!(addr + 5000 <= top);
        assert!(top - addr < 5000 + PAGE_SIZE);
        assert_eq!(addr, top - 2 * PAGE_SIZE);
    }

    #[test]
    fn initrd_never_overlaps_the_kernel() {
        let top = 64 << 20;
        let kernel_end = 40 << 20;
        assert!(initrd_address(24 << 20, kernel_end, top).is_ok());
        assert_eq!(
            initrd_address((24 << 20) + 1, kernel_end, top),
            Err(InitrdError::TooLarge {
                size: (24 << 20) + 1,
                kernel_end,
                low_ram_end: top
            })
        );
        // A kernel end inside a page pushes the limit to the next page.
        assert!(initrd_address(24 << 20, kernel_end + 1, top).is_err());
    }

    #[test]
    fn degenerate_sizes_are_errors() {
        assert_eq!(initrd_address(0, 0, 1 << 20), Err(InitrdError::Empty));
        assert!(initrd_address(u64::MAX, 0, 1 << 20).is_err());
    }
}
