//! Content digests (`sha256:<hex>`), the layer chain ID, and a reader that
//! hashes what passes through it.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("unsupported digest algorithm in {0:?}: only sha256 is supported")]
    UnsupportedAlgorithm(String),
    #[error("malformed digest {0:?}: expected sha256:<64 lowercase hex digits>")]
    Malformed(String),
}

/// A sha256 content digest. Displayed as `sha256:<hex>`, the form Docker and
/// OCI use everywhere (image IDs, diff IDs, chain IDs).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Digest {
    hex: String,
}

impl Digest {
    /// Parses `sha256:<64 lowercase hex>`; anything else is refused so a
    /// digest can be used as a file name without further checks.
    pub fn parse(text: &str) -> Result<Self, DigestError> {
        let (algorithm, hex) = text
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(text.to_string()))?;
        if algorithm != "sha256" {
            return Err(DigestError::UnsupportedAlgorithm(text.to_string()));
        }
        Self::from_hex(hex).map_err(|_| DigestError::Malformed(text.to_string()))
    }

    /// Accepts the bare 64-digit lowercase hex form (store directory names).
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        let valid = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !valid {
            return Err(DigestError::Malformed(hex.to_string()));
        }
        Ok(Self {
            hex: hex.to_string(),
        })
    }

    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Self {
        Self {
            hex: hex::encode(hasher.finalize()),
        }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// The 12-digit prefix `docker images` shows.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// ChainID(L1) = DiffID(L1); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)),
/// both written as `sha256:<hex>` (the OCI image spec's definition, as Docker
/// computes it). Identifies a layer together with everything below it.
pub fn chain_id(parent: Option<&Digest>, diff_id: &Digest) -> Digest {
    match parent {
        None => diff_id.clone(),
        Some(parent) => Digest::of_bytes(format!("{parent} {diff_id}").as_bytes()),
    }
}

/// Chain IDs of a stack of layers, bottom to top.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut chain: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = chain_id(chain.last(), diff_id);
        chain.push(next);
    }
    chain
}

/// Hashes every byte read through it, and refuses to read past `limit`
/// bytes (a decompression bomb ends as an error, not a full disk).
pub struct HashingReader<R> {
    inner: R,
    /// `None`: only counts and limits (the bytes are hashed elsewhere).
    hasher: Option<Sha256>,
    bytes: u64,
    limit: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hasher: Some(Sha256::new()),
            bytes: 0,
            limit,
        }
    }

    /// Counts and limits without hashing.
    pub fn counting(inner: R, limit: u64) -> Self {
        Self {
            inner,
            hasher: None,
            bytes: 0,
            limit,
        }
    }

    /// Reads the rest of the stream (trailing tar padding, data after the
    /// compressed stream) so the digest covers all of it.
    pub fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(|_| ())
    }

    /// The digest (`None` for a counting reader) and the byte count.
    pub fn finish(self) -> (Option<Digest>, u64) {
        (self.hasher.map(Digest::from_hasher), self.bytes)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.bytes > self.limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stream is larger than the limit of {} bytes", self.limit),
            ));
        }
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_and_displays_sha256() {
        let d = Digest::parse(&format!("sha256:{EMPTY}")).unwrap();
        assert_eq!(d, Digest::of_bytes(b""));
        assert_eq!(d.to_string(), format!("sha256:{EMPTY}"));
        assert_eq!(d.short(), "e3b0c44298fc");
    }

    #[test]
    fn refuses_other_algorithms_and_bad_hex() {
        assert!(matches!(
            Digest::parse("sha512:abcd"),
            Err(DigestError::UnsupportedAlgorithm(_))
        ));
        assert!(Digest::parse(&format!("sha256:{}", EMPTY.to_uppercase())).is_err());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse(EMPTY).is_err());
        assert!(Digest::from_hex(&EMPTY[1..]).is_err());
    }

    #[test]
    fn chain_id_follows_the_spec_formula() {
        let a = Digest::of_bytes(b"a");
        let b = Digest::of_bytes(b"b");
        let c = Digest::of_bytes(b"c");
        let ids = chain_ids(&[a.clone(), b.clone(), c.clone()]);
        assert_eq!(ids[0], a);
        let ab = Digest::of_bytes(format!("sha256:{} sha256:{}", a.hex(), b.hex()).as_bytes());
        assert_eq!(ids[1], ab);
        let abc = Digest::of_bytes(format!("sha256:{} sha256:{}", ab.hex(), c.hex()).as_bytes());
        assert_eq!(ids[2], abc);
    }

    #[test]
    fn hashing_reader_hashes_and_limits() {
        let mut r = HashingReader::new(&b"hello"[..], 10);
        r.drain().unwrap();
        assert_eq!(r.finish(), (Some(Digest::of_bytes(b"hello")), 5));
        let mut r = HashingReader::counting(&b"hello"[..], 10);
        r.drain().unwrap();
        assert_eq!(r.finish(), (None, 5));
        let mut r = HashingReader::new(&b"hello"[..], 4);
        assert!(r.drain().is_err());
    }
}
