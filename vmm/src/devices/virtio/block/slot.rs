//! A disk slot: a read-only disk of fixed capacity whose contents can be
//! swapped while the guest runs (how a pod's VM gets the layers of a
//! container that joins it: virtio-mmio has no hotplug). Empty, it reads
//! zeros; attached, it reads a [`ConcatImage`] of files the VMM was handed
//! (its control socket, SCM_RIGHTS: the jailed VMM opens nothing), then
//! zeros up to the capacity. The capacity never changes, so the guest's
//! idea of the disk stays right without a config-change interrupt; the
//! guest drops its cache of the disk before using new contents.

use std::sync::{Arc, Mutex, MutexGuard};

use super::concat::ConcatImage;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SlotError {
    #[error("the images take {size} bytes; the slot holds {capacity}")]
    TooLarge { size: u64, capacity: u64 },
}

/// The swappable contents of a slot, shared by its device (which reads)
/// and the control socket (which swaps).
#[derive(Debug, Clone)]
pub struct SlotBacking {
    capacity: u64,
    image: Arc<Mutex<Option<ConcatImage>>>,
}

impl SlotBacking {
    /// An empty slot of `capacity` bytes (a multiple of 512).
    pub fn new(capacity: u64) -> Self {
        SlotBacking {
            capacity,
            image: Arc::new(Mutex::new(None)),
        }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// From now on the slot reads `image` (the previous one's files close).
    pub fn attach(&self, image: ConcatImage) -> Result<(), SlotError> {
        if image.size() > self.capacity {
            return Err(SlotError::TooLarge {
                size: image.size(),
                capacity: self.capacity,
            });
        }
        *self.lock() = Some(image);
        Ok(())
    }

    /// From now on the slot reads zeros.
    pub fn detach(&self) {
        *self.lock() = None;
    }

    pub fn is_attached(&self) -> bool {
        self.lock().is_some()
    }

    /// The current contents, held for one request (a swap waits for it).
    pub(super) fn lock(&self) -> MutexGuard<'_, Option<ConcatImage>> {
        // A panicking reader leaves the image as it was: still usable.
        self.image.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(bytes: &[u8]) -> std::fs::File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn a_slot_takes_images_that_fit_and_can_be_emptied() {
        let slot = SlotBacking::new(4096);
        assert!(!slot.is_attached());
        let image = ConcatImage::from_files(vec![file(&[1; 1024]), file(&[2; 512])]).unwrap();
        assert_eq!(image.size(), 1536);
        slot.attach(image).unwrap();
        assert!(slot.is_attached());
        let big = ConcatImage::from_files(vec![file(&[3; 8192])]).unwrap();
        assert_eq!(
            slot.attach(big).unwrap_err(),
            SlotError::TooLarge {
                size: 8192,
                capacity: 4096
            }
        );
        assert!(slot.is_attached(), "a refused swap keeps the old image");
        slot.detach();
        assert!(!slot.is_attached());
    }

    #[test]
    fn passed_files_are_checked_like_listed_ones() {
        assert!(ConcatImage::from_files(vec![]).is_err());
        assert!(ConcatImage::from_files(vec![file(&[0; 100])]).is_err());
        assert!(ConcatImage::from_files(vec![file(&[])]).is_err());
        let dir = std::fs::File::open(std::env::temp_dir()).unwrap();
        assert!(ConcatImage::from_files(vec![dir]).is_err());
    }
}
