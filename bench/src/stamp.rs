//! Parsing the interposer's record file (see interposer/kvm_run_stamp.rs).

use std::ops::Range;

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StampError {
    #[error("line {line}: cannot parse {text:?}")]
    BadLine { line: usize, text: String },
}

/// One KVM_SET_USER_MEMORY_REGION call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegionRecord {
    pub slot: u32,
    pub guest_phys_addr: u64,
    /// 0 deletes the slot.
    pub memory_size: u64,
    pub userspace_addr: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StampLog {
    /// CLOCK_MONOTONIC nanoseconds of the first KVM_RUN.
    pub first_kvm_run_ns: Option<u64>,
    /// Region calls in the order the VMM made them.
    pub regions: Vec<RegionRecord>,
}

fn parse_u64(text: &str) -> Option<u64> {
    match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// Parses the record file. A last line without its newline is still being
/// written and is ignored.
pub fn parse_stamp_log(text: &str) -> Result<StampLog, StampError> {
    let mut log = StampLog::default();
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    for (index, line) in complete.lines().enumerate() {
        let bad = || StampError::BadLine {
            line: index + 1,
            text: line.to_owned(),
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["first_kvm_run", ns] => {
                let ns = parse_u64(ns).ok_or_else(bad)?;
                log.first_kvm_run_ns.get_or_insert(ns);
            }
            ["region", slot, guest, size, host] => log.regions.push(RegionRecord {
                slot: slot.parse().map_err(|_| bad())?,
                guest_phys_addr: parse_u64(guest).ok_or_else(bad)?,
                memory_size: parse_u64(size).ok_or_else(bad)?,
                userspace_addr: parse_u64(host).ok_or_else(bad)?,
            }),
            [] => {}
            _ => return Err(bad()),
        }
    }
    Ok(log)
}

impl StampLog {
    /// Host address ranges that back guest memory at the end of the log:
    /// the last call per slot wins, deleted slots drop out, and ranges that
    /// overlap (one host buffer aliased at two guest addresses) are merged
    /// so no page is counted twice.
    pub fn guest_host_ranges(&self) -> Vec<Range<u64>> {
        let mut by_slot: std::collections::BTreeMap<u32, RegionRecord> = Default::default();
        for region in &self.regions {
            if region.memory_size == 0 {
                by_slot.remove(&region.slot);
            } else {
                by_slot.insert(region.slot, *region);
            }
        }
        let mut ranges: Vec<Range<u64>> = by_slot
            .values()
            .filter_map(|r| {
                let end = r.userspace_addr.checked_add(r.memory_size)?;
                Some(r.userspace_addr..end)
            })
            .collect();
        ranges.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
        for range in ranges {
            match merged.last_mut() {
                Some(last) if range.start <= last.end => last.end = last.end.max(range.end),
                _ => merged.push(range),
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_regions_and_first_run() {
        let text = "region 0 0x0 268435456 0x7f0000000000\n\
                    region 1 0xfeffc000 16384 0x7f1000000000\n\
                    first_kvm_run 123456789\n";
        let log = parse_stamp_log(text).unwrap();
        assert_eq!(log.first_kvm_run_ns, Some(123_456_789));
        assert_eq!(log.regions.len(), 2);
        assert_eq!(log.regions[1].guest_phys_addr, 0xfeff_c000);
        assert_eq!(log.regions[1].memory_size, 16384);
    }

    #[test]
    fn unfinished_last_line_is_ignored() {
        let log = parse_stamp_log("region 0 0x0 4096 0x1000\nfirst_kvm_ru").unwrap();
        assert_eq!(log.first_kvm_run_ns, None);
        assert_eq!(log.regions.len(), 1);
        assert_eq!(
            parse_stamp_log("first_kvm_run 5").unwrap(),
            StampLog::default()
        );
    }

    #[test]
    fn garbage_is_an_error_with_its_line() {
        let err = parse_stamp_log("region 0 0x0 4096 0x1000\nregion x 0 0 0\n").unwrap_err();
        assert_eq!(
            err,
            StampError::BadLine {
                line: 2,
                text: "region x 0 0 0".into()
            }
        );
        assert!(parse_stamp_log("first_kvm_run 0xzz\n").is_err());
        assert!(parse_stamp_log("hello\n").is_err());
    }

    #[test]
    fn last_call_per_slot_wins_and_deleted_slots_drop_out() {
        let text = "region 0 0x0 8192 0x10000\n\
                    region 1 0x100000 4096 0x50000\n\
                    region 0 0x0 0 0x10000\n\
                    region 0 0x0 4096 0x20000\n\
                    region 2 0xc0000 4096 0x90000\n\
                    region 2 0xc0000 0 0x90000\n";
        let ranges = parse_stamp_log(text).unwrap().guest_host_ranges();
        assert_eq!(ranges, vec![0x20000..0x21000, 0x50000..0x51000]);
    }

    #[test]
    fn aliased_host_memory_is_counted_once() {
        // QEMU maps the same BIOS buffer at two guest addresses.
        let text = "region 0 0xe0000 131072 0x40000\n\
                    region 1 0xfffe0000 131072 0x40000\n\
                    region 2 0x0 65536 0x50000\n";
        let ranges = parse_stamp_log(text).unwrap().guest_host_ranges();
        assert_eq!(ranges, vec![0x40000..0x60000]);
    }

    #[test]
    fn overflowing_region_is_dropped() {
        let text = format!("region 0 0x0 8192 {:#x}\n", u64::MAX - 10);
        assert!(parse_stamp_log(&text)
            .unwrap()
            .guest_host_ranges()
            .is_empty());
    }
}
