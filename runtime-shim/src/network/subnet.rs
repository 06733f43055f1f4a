//! IPv4 subnets: the bridge's range, chosen clear of the host's routes.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    pub fn new(address: Ipv4Addr, prefix_len: u8) -> Option<Self> {
        (prefix_len <= 30).then(|| Subnet {
            network: Ipv4Addr::from(u32::from(address) & mask(prefix_len)),
            prefix_len,
        })
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        let shorter = self.prefix_len.min(other.prefix_len);
        u32::from(self.network) & mask(shorter) == u32::from(other.network) & mask(shorter)
    }

    /// The `n`th address (0 is the network address).
    pub fn host(&self, n: u32) -> Option<Ipv4Addr> {
        (n > 0 && n < self.size() - 1).then(|| Ipv4Addr::from(u32::from(self.network) + n))
    }

    pub fn size(&self) -> u32 {
        1u32 << (32 - u32::from(self.prefix_len))
    }

    /// The bridge's own address: the first host.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }
}

fn mask(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not an IPv4 subnet like 10.88.0.0/24 (prefix 8-30)");
        let (address, prefix) = text.split_once('/').ok_or_else(bad)?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix < 8 {
            return Err(bad());
        }
        Subnet::new(address, prefix).ok_or_else(bad)
    }
}

/// The first of `candidates` that overlaps none of `routes`.
pub fn pick(candidates: impl IntoIterator<Item = Subnet>, routes: &[Subnet]) -> Option<Subnet> {
    candidates
        .into_iter()
        .find(|candidate| !routes.iter().any(|route| route.overlaps(candidate)))
}

/// husk's default candidates: 10.88.0.0/24, 10.88.1.0/24, ... 10.88.255.0/24.
pub fn default_candidates() -> impl Iterator<Item = Subnet> {
    (0..=255u8).filter_map(|third| Subnet::new(Ipv4Addr::new(10, 88, third, 0), 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Subnet {
        text.parse().unwrap()
    }

    #[test]
    fn subnets_parse_normalise_and_overlap() {
        assert_eq!(s("10.88.0.7/24"), s("10.88.0.0/24"));
        assert!(s("10.0.0.0/8").overlaps(&s("10.88.3.0/24")));
        assert!(!s("10.88.0.0/24").overlaps(&s("10.88.1.0/24")));
        assert_eq!(s("10.88.0.0/24").gateway().to_string(), "10.88.0.1");
        assert_eq!(s("10.88.0.0/24").host(255), None);
        assert_eq!(
            s("10.88.0.0/24").host(254).unwrap().to_string(),
            "10.88.0.254"
        );
        for bad in ["10.88.0.0", "10.88.0.0/31", "x/24", "1.0.0.0/4"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn the_first_candidate_clear_of_every_route_is_picked() {
        let routes = [s("10.88.0.0/24"), s("192.168.1.0/24")];
        assert_eq!(pick(default_candidates(), &routes), Some(s("10.88.1.0/24")));
        assert_eq!(pick(default_candidates(), &[s("10.0.0.0/8")]), None);
    }
}
