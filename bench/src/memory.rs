//! A VMM's resident memory outside guest RAM: the process's total Rss
//! (/proc/PID/smaps_rollup) minus the resident pages of the host ranges it
//! registered with KVM (counted exactly, page by page, in /proc/PID/pagemap).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use thiserror::Error;

const PAGE_SIZE: u64 = 4096;
const PAGEMAP_ENTRY_BYTES: u64 = 8;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAPPED: u64 = 1 << 62;
const PM_FILE_OR_SHARED_ANON: u64 = 1 << 61;
const PM_MMAP_EXCLUSIVE: u64 = 1 << 56;

#[derive(Debug, Error)]
pub enum MemoryError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: no Rss line")]
    NoRss(PathBuf),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySample {
    /// Total resident set of the process.
    pub rss_bytes: u64,
    /// Resident pages that back guest memory.
    pub guest_resident_bytes: u64,
}

impl MemorySample {
    /// What the VMM itself costs: everything resident that is not guest RAM.
    pub fn outside_guest_bytes(&self) -> u64 {
        self.rss_bytes.saturating_sub(self.guest_resident_bytes)
    }
}

/// The `Rss:` figure of smaps_rollup text, in bytes.
pub fn parse_rss(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup.lines().find_map(|line| {
        let rest = line.strip_prefix("Rss:")?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// Whether a pagemap entry is a page counted in Rss. The shared zero page
/// (what guest reads of untouched memory map) is present but neither
/// exclusive nor file-backed, and Rss does not count it either.
pub fn counts_in_rss(entry: u64) -> bool {
    entry & PM_PRESENT != 0
        && entry & PM_SWAPPED == 0
        && entry & (PM_MMAP_EXCLUSIVE | PM_FILE_OR_SHARED_ANON) != 0
}

/// Counts the pages of `ranges` that `counts_in_rss` accepts, reading the
/// pagemap through `read_at` (a file in production, a buffer in tests).
pub fn resident_pages(
    ranges: &[Range<u64>],
    mut read_at: impl FnMut(&mut [u8], u64) -> std::io::Result<()>,
) -> std::io::Result<u64> {
    const CHUNK_PAGES: u64 = 4096;
    let mut resident = 0;
    let mut buf = vec![0u8; (CHUNK_PAGES * PAGEMAP_ENTRY_BYTES) as usize];
    for range in ranges {
        let first = range.start / PAGE_SIZE;
        let end = range.end.div_ceil(PAGE_SIZE);
        let mut page = first;
        while page < end {
            let count = (end - page).min(CHUNK_PAGES);
            let bytes = &mut buf[..(count * PAGEMAP_ENTRY_BYTES) as usize];
            read_at(bytes, page * PAGEMAP_ENTRY_BYTES)?;
            resident += bytes
                .chunks_exact(PAGEMAP_ENTRY_BYTES as usize)
                .filter_map(|e| e.try_into().ok().map(u64::from_le_bytes))
                .filter(|e| counts_in_rss(*e))
                .count() as u64;
            page += count;
        }
    }
    Ok(resident)
}

/// Samples process `pid`, whose guest memory lives at `guest_ranges`.
pub fn sample(pid: u32, guest_ranges: &[Range<u64>]) -> Result<MemorySample, MemoryError> {
    let rollup_path = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
    let rollup = std::fs::read_to_string(&rollup_path).map_err(|source| MemoryError::Read {
        path: rollup_path.clone(),
        source,
    })?;
    let rss_bytes = parse_rss(&rollup).ok_or(MemoryError::NoRss(rollup_path))?;

    let pagemap_path = PathBuf::from(format!("/proc/{pid}/pagemap"));
    let read_err = |source| MemoryError::Read {
        path: pagemap_path.clone(),
        source,
    };
    let pagemap = File::open(&pagemap_path).map_err(read_err)?;
    let pages = resident_pages(guest_ranges, |buf, offset| {
        pagemap.read_exact_at(buf, offset)
    })
    .map_err(read_err)?;
    Ok(MemorySample {
        rss_bytes,
        guest_resident_bytes: pages * PAGE_SIZE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_rollup() {
        let text = "55d0c0000000-7ffc0000000 ---p 00000000 00:00 0  [rollup]\n\
                    Rss:               12345 kB\nPss:                1000 kB\n";
        assert_eq!(parse_rss(text), Some(12345 * 1024));
        assert_eq!(parse_rss("Pss: 5 kB\n"), None);
        assert_eq!(parse_rss("Rss: lots kB\n"), None);
    }

    #[test]
    fn zero_page_and_swapped_pages_do_not_count() {
        let private = PM_PRESENT | PM_MMAP_EXCLUSIVE | 0x1234;
        let file = PM_PRESENT | PM_FILE_OR_SHARED_ANON;
        let zero_page = PM_PRESENT;
        let swapped = PM_SWAPPED | PM_MMAP_EXCLUSIVE;
        assert!(counts_in_rss(private));
        assert!(counts_in_rss(file));
        assert!(!counts_in_rss(zero_page));
        assert!(!counts_in_rss(swapped));
        assert!(!counts_in_rss(0));
    }

    /// A fake pagemap: entry i describes page i.
    fn fake_pagemap(entries: &[u64]) -> impl FnMut(&mut [u8], u64) -> std::io::Result<()> + '_ {
        move |buf, offset| {
            for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
                let index = (offset / 8) as usize + i;
                let value = entries.get(index).copied().unwrap_or(0);
                chunk.copy_from_slice(&value.to_le_bytes());
            }
            Ok(())
        }
    }

    #[test]
    fn counts_only_resident_pages_inside_the_ranges() {
        let present = PM_PRESENT | PM_MMAP_EXCLUSIVE;
        let mut entries = vec![0u64; 10_000];
        for i in [0, 1, 5, 6, 7, 9_000, 9_999] {
            entries[i] = present;
        }
        entries[2] = PM_PRESENT; // zero page
        let ranges = [
            0..3 * PAGE_SIZE,
            5 * PAGE_SIZE..8 * PAGE_SIZE - 1,
            8_000 * PAGE_SIZE..10_000 * PAGE_SIZE,
        ];
        let pages = resident_pages(&ranges, fake_pagemap(&entries)).unwrap();
        assert_eq!(pages, 2 + 3 + 2);
    }

    #[test]
    fn pagemap_read_errors_propagate() {
        let one_page = 0..PAGE_SIZE;
        let result = resident_pages(std::slice::from_ref(&one_page), |_, _| {
            Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied))
        });
        assert!(result.is_err());
    }

    #[test]
    fn samples_this_process() {
        // A buffer we touch is resident; counting its range finds it.
        let mut buffer = vec![0u8; 64 * PAGE_SIZE as usize];
        for b in buffer.iter_mut().step_by(PAGE_SIZE as usize) {
            *b = 1;
        }
        let start = buffer.as_ptr() as u64;
        let aligned = start.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let range = aligned..aligned + 32 * PAGE_SIZE;
        let s = sample(std::process::id(), &[range]).unwrap();
        assert_eq!(s.guest_resident_bytes, 32 * PAGE_SIZE);
        assert!(s.rss_bytes > s.guest_resident_bytes);
        std::hint::black_box(&buffer);
    }
}
