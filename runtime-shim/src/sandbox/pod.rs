//! One microVM for a pod: layer-disk slots for the members.
//!
//! virtio-mmio has no hotplug, so a pod's VM boots with [`POD_SLOTS`] spare
//! read-only disks (serials `husk-pod-1`, ...), each backed by an empty
//! sparse file of [`SLOT_BYTES`]. When a member joins, the sandbox's
//! monitor picks a free slot ([`SlotTable`]) and swaps the slot's backing
//! for the member's layers: with QEMU, a VMDK descriptor whose flat extents
//! are the layer files, padded with the empty file to the same
//! [`SLOT_BYTES`] (so the guest's idea of the disk's capacity stays right
//! and no config-change interrupt is needed), attached through QMP
//! (`blockdev-add`, then `blockdev-reopen` of the slot's raw node with the
//! new `file` child). With husk-vmm the slots are `--disk-slot`s of the same
//! size, and the layer files are handed to its control socket open
//! (SCM_RIGHTS: the jailed VMM opens nothing). Removing the member empties
//! the slot again. The agent drops its cache of the disk before mounting a
//! slot again.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::backend::{concat_part_sizes, BackendError};

/// Spare layer disks of a pod's VM: QEMU microvm has 8 virtio-mmio
/// transports, of which the agent channel, the sandbox's layers and a NIC
/// take three.
pub const POD_SLOTS: u32 = 4;
/// Every slot's capacity: a member's layers (all of its image) must fit.
pub const SLOT_BYTES: u64 = 16 << 30;
/// How long one QMP command may take (QEMU under TCG on a loaded host).
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest QMP line read (bounded: QEMU is trusted, but not unbounded).
const MAX_QMP_LINE: usize = 1 << 20;

/// The serial of slot `index` (0-based): `husk-pod-1`, ...
pub fn slot_serial(index: usize) -> String {
    format!("husk-pod-{}", index + 1)
}

/// How a pod's VM is built: its slots and the QMP socket they are swapped
/// through (in the VM's run directory).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSlots {
    pub count: u32,
    /// The sparse empty file every free slot reads.
    pub empty: PathBuf,
    /// QEMU's QMP socket.
    pub qmp_socket: PathBuf,
    /// husk-vmm's control socket (a name no longer than `console.sock`:
    /// the state directory's socket paths are sized for that).
    pub control_socket: PathBuf,
}

impl PodSlots {
    /// Slots for a VM whose run directory is `dir`.
    pub fn in_dir(dir: &Path, count: u32) -> Self {
        PodSlots {
            count,
            empty: dir.join("pod-empty.img"),
            qmp_socket: dir.join("qmp.sock"),
            control_socket: dir.join("ctl.sock"),
        }
    }

    /// Creates the empty file (sparse: it costs no space).
    pub fn create_empty(&self) -> Result<(), BackendError> {
        let file = std::fs::File::create(&self.empty).map_err(|source| BackendError::Log {
            path: self.empty.clone(),
            source,
        })?;
        file.set_len(SLOT_BYTES)
            .map_err(|source| BackendError::Log {
                path: self.empty.clone(),
                source,
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error("the pod's VM has no free layer-disk slot (at most {0} containers besides the sandbox); remove one first")]
    Full(usize),
    #[error("the member's layers take {bytes} bytes; a pod member's image may take at most {max}", max = SLOT_BYTES)]
    TooBig { bytes: u64 },
    #[error("QMP: {0}")]
    Qmp(String),
    #[error("husk-vmm's control socket: {0}")]
    Control(String),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Who holds which slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    Free,
    /// Holds this member's layers.
    Used(String),
    /// Its member could not be removed cleanly: never reused.
    Broken,
}

#[derive(Debug)]
pub struct SlotTable {
    slots: Vec<Slot>,
}

impl SlotTable {
    pub fn new(count: usize) -> Self {
        SlotTable {
            slots: vec![Slot::Free; count],
        }
    }

    /// The first free slot, now `member`'s.
    pub fn take(&mut self, member: &str) -> Result<usize, PodError> {
        let index = self
            .slots
            .iter()
            .position(|s| *s == Slot::Free)
            .ok_or(PodError::Full(self.slots.len()))?;
        self.slots[index] = Slot::Used(member.to_owned());
        Ok(index)
    }

    pub fn release(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Slot::Free;
        }
    }

    /// The slot's disk may still be in use in the guest: keep it out.
    pub fn mark_broken(&mut self, index: usize) {
        if let Some(slot) = self.slots.get_mut(index) {
            *slot = Slot::Broken;
        }
    }

    pub fn get(&self, index: usize) -> Option<&Slot> {
        self.slots.get(index)
    }
}

/// A VMDK descriptor of `parts` padded with `empty` to [`SLOT_BYTES`].
pub fn slot_descriptor(parts: &[PathBuf], empty: &Path) -> Result<String, PodError> {
    let bytes: u64 = concat_part_sizes(parts)?.iter().sum();
    if bytes > SLOT_BYTES {
        return Err(PodError::TooBig { bytes });
    }
    let mut text = super::qemu::vmdk_descriptor(parts)?;
    let pad = SLOT_BYTES - bytes;
    if pad > 0 {
        let empty_text = empty.to_str().filter(|p| !p.contains(['"', '\n', ',']));
        let Some(empty_text) = empty_text else {
            return Err(BackendError::Config(format!("bad path {}", empty.display())).into());
        };
        text.push_str(&format!("RW {} FLAT \"{empty_text}\" 0\n", pad / 512));
    }
    Ok(text)
}

/// A QMP connection to QEMU (its JSON lines; events skipped).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects (QEMU made the socket before the guest could boot), reads
    /// the greeting and leaves capabilities negotiation.
    pub fn connect(path: &Path) -> Result<Self, PodError> {
        let stream = UnixStream::connect(path)
            .map_err(|e| PodError::Qmp(format!("{}: {e}", path.display())))?;
        stream
            .set_read_timeout(Some(QMP_TIMEOUT))
            .map_err(|e| PodError::Qmp(e.to_string()))?;
        let writer = stream
            .try_clone()
            .map_err(|e| PodError::Qmp(e.to_string()))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = qmp.read_message()?;
        if greeting.get("QMP").is_none() {
            return Err(PodError::Qmp(format!("no greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_message(&mut self) -> Result<Value, PodError> {
        let mut line = Vec::new();
        let read = Read::take(&mut self.reader, MAX_QMP_LINE as u64)
            .read_until(b'\n', &mut line)
            .map_err(|e| PodError::Qmp(format!("reading: {e}")))?;
        if read == 0 {
            return Err(PodError::Qmp("QEMU closed the connection".into()));
        }
        serde_json::from_slice(&line).map_err(|e| PodError::Qmp(format!("bad reply: {e}")))
    }

    /// Runs one command; its `return` value, or its error as text.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, PodError> {
        let mut line = serde_json::to_vec(&json!({"execute": command, "arguments": arguments}))
            .map_err(|e| PodError::Qmp(e.to_string()))?;
        line.push(b'\n');
        self.writer
            .write_all(&line)
            .map_err(|e| PodError::Qmp(format!("{command}: {e}")))?;
        let deadline = Instant::now() + QMP_TIMEOUT;
        loop {
            let message = self.read_message()?;
            if let Some(value) = message.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = message.get("error") {
                let desc = error
                    .get("desc")
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error");
                return Err(PodError::Qmp(format!("{command}: {desc}")));
            }
            // An event: not ours to answer.
            if Instant::now() >= deadline {
                return Err(PodError::Qmp(format!("{command}: no answer")));
            }
        }
    }
}

/// The node names a QEMU pod VM uses for slot `index`.
pub fn slot_nodes(index: usize) -> (String, String) {
    (
        format!("pod-{}", index + 1),
        format!("pod-empty-{}", index + 1),
    )
}

/// The QEMU command-line arguments of the slots.
pub fn qemu_args(slots: &PodSlots) -> Result<Vec<String>, BackendError> {
    let empty = slots
        .empty
        .to_str()
        .filter(|p| !p.contains(','))
        .ok_or_else(|| BackendError::Config(format!("bad path {}", slots.empty.display())))?;
    let qmp = slots
        .qmp_socket
        .to_str()
        .filter(|p| !p.contains(','))
        .ok_or_else(|| BackendError::Config(format!("bad path {}", slots.qmp_socket.display())))?;
    let mut args = vec!["-qmp".to_string(), format!("unix:{qmp},server=on,wait=off")];
    for index in 0..slots.count as usize {
        let (node, empty_node) = slot_nodes(index);
        args.push("-blockdev".into());
        args.push(format!(
            "driver=file,node-name={empty_node},filename={empty},read-only=on"
        ));
        args.push("-blockdev".into());
        args.push(format!(
            "driver=raw,node-name={node},file={empty_node},read-only=on"
        ));
        args.push("-device".into());
        args.push(format!(
            "virtio-blk-device,drive={node},serial={}",
            slot_serial(index)
        ));
    }
    Ok(args)
}

/// What swaps a pod VM's slots: QEMU's QMP or husk-vmm's control socket.
pub trait SlotSwitch: Send {
    /// Slot `index` now reads `parts` one after the other (then zeros).
    fn attach(&mut self, index: usize, parts: &[PathBuf]) -> Result<(), PodError>;
    /// Slot `index` reads zeros again; the member's files are closed.
    fn detach(&mut self, index: usize) -> Result<(), PodError>;
}

/// The slot switch for a VM of backend `kind`.
pub fn connect(
    kind: super::backend::BackendKind,
    slots: PodSlots,
) -> Result<Box<dyn SlotSwitch>, PodError> {
    Ok(match kind {
        super::backend::BackendKind::HuskVmm => Box::new(VmmSlots::new(slots)),
        _ => Box::new(QemuSlots::connect(slots)?),
    })
}

/// husk-vmm's slots: one request per connection to its control socket, a
/// JSON line with the layer files' descriptors attached.
pub struct VmmSlots {
    slots: PodSlots,
}

impl VmmSlots {
    pub fn new(slots: PodSlots) -> Self {
        VmmSlots { slots }
    }

    fn request(&self, line: Value, files: &[std::fs::File]) -> Result<(), PodError> {
        use std::os::fd::AsRawFd;
        let failed = |e: String| PodError::Control(e);
        let stream = UnixStream::connect(&self.slots.control_socket)
            .map_err(|e| failed(format!("{}: {e}", self.slots.control_socket.display())))?;
        stream
            .set_read_timeout(Some(QMP_TIMEOUT))
            .map_err(|e| failed(e.to_string()))?;
        let mut bytes = serde_json::to_vec(&line).map_err(|e| failed(e.to_string()))?;
        bytes.push(b'\n');
        let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        let iov = [std::io::IoSlice::new(&bytes)];
        let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
        // One message: the request and its descriptors arrive together.
        let sent = nix::sys::socket::sendmsg::<()>(
            stream.as_raw_fd(),
            &iov,
            if fds.is_empty() { &[] } else { &cmsg },
            nix::sys::socket::MsgFlags::empty(),
            None,
        )
        .map_err(|e| failed(format!("sending: {e}")))?;
        if sent != bytes.len() {
            return Err(failed("the request was cut short".into()));
        }
        let mut reply = Vec::new();
        Read::take(BufReader::new(&stream), MAX_QMP_LINE as u64)
            .read_until(b'\n', &mut reply)
            .map_err(|e| failed(format!("reading the reply: {e}")))?;
        match serde_json::from_slice::<Value>(&reply) {
            Ok(Value::String(ok)) if ok == "ok" => Ok(()),
            Ok(value) => match value.get("error").and_then(Value::as_str) {
                Some(message) => Err(failed(message.to_string())),
                None => Err(failed(format!("unexpected reply {value}"))),
            },
            Err(e) => Err(failed(format!("bad reply: {e}"))),
        }
    }
}

impl SlotSwitch for VmmSlots {
    fn attach(&mut self, index: usize, parts: &[PathBuf]) -> Result<(), PodError> {
        let bytes: u64 = concat_part_sizes(parts)?.iter().sum();
        if bytes > SLOT_BYTES {
            return Err(PodError::TooBig { bytes });
        }
        let files = parts
            .iter()
            .map(|part| {
                std::fs::File::open(part)
                    .map_err(|e| PodError::Control(format!("{}: {e}", part.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.request(json!({"attach": {"serial": slot_serial(index)}}), &files)
    }

    fn detach(&mut self, index: usize) -> Result<(), PodError> {
        self.request(json!({"detach": {"serial": slot_serial(index)}}), &[])
    }
}

impl SlotSwitch for QemuSlots {
    fn attach(&mut self, index: usize, parts: &[PathBuf]) -> Result<(), PodError> {
        QemuSlots::attach(self, index, parts)
    }

    fn detach(&mut self, index: usize) -> Result<(), PodError> {
        QemuSlots::detach(self, index)
    }
}

/// Swaps the backing of a QEMU pod VM's slots.
pub struct QemuSlots {
    qmp: Qmp,
    slots: PodSlots,
    /// The member node each slot has now (`None`: the empty file).
    current: Vec<Option<String>>,
    generation: u64,
    /// Descriptor files to remove once their node is gone.
    descriptors: VecDeque<(String, PathBuf)>,
}

impl QemuSlots {
    pub fn connect(slots: PodSlots) -> Result<Self, PodError> {
        let qmp = Qmp::connect(&slots.qmp_socket)?;
        Ok(QemuSlots {
            qmp,
            current: vec![None; slots.count as usize],
            slots,
            generation: 0,
            descriptors: VecDeque::new(),
        })
    }

    /// Slot `index` now reads `parts` one after the other (then zeros).
    pub fn attach(&mut self, index: usize, parts: &[PathBuf]) -> Result<(), PodError> {
        if index >= self.current.len() {
            return Err(PodError::Qmp(format!("no slot {index}")));
        }
        self.generation += 1;
        let member_node = format!("pod-{}-m{}", index + 1, self.generation);
        let dir = self.slots.empty.parent().unwrap_or(Path::new("/"));
        let descriptor = dir.join(format!("{member_node}.vmdk"));
        let text = slot_descriptor(parts, &self.slots.empty)?;
        std::fs::write(&descriptor, text).map_err(|source| BackendError::Log {
            path: descriptor.clone(),
            source,
        })?;
        let added = self.qmp.execute(
            "blockdev-add",
            json!({
                "driver": "vmdk",
                "node-name": member_node,
                "read-only": true,
                "file": {"driver": "file", "filename": descriptor, "read-only": true},
            }),
        );
        if let Err(e) = added {
            let _ = std::fs::remove_file(&descriptor);
            return Err(e);
        }
        self.descriptors
            .push_back((member_node.clone(), descriptor));
        if let Err(e) = self.point(index, &member_node) {
            self.delete_node(&member_node);
            return Err(e);
        }
        if let Some(old) = self.current[index].replace(member_node) {
            self.delete_node(&old);
        }
        Ok(())
    }

    /// Slot `index` reads the empty file again; the member's files are
    /// closed.
    pub fn detach(&mut self, index: usize) -> Result<(), PodError> {
        let Some(old) = self.current.get(index).cloned().flatten() else {
            return Ok(());
        };
        let (_, empty_node) = slot_nodes(index);
        self.point(index, &empty_node)?;
        self.current[index] = None;
        self.delete_node(&old);
        Ok(())
    }

    fn point(&mut self, index: usize, file_node: &str) -> Result<(), PodError> {
        let (node, _) = slot_nodes(index);
        self.qmp.execute(
            "blockdev-reopen",
            json!({"options": [{
                "driver": "raw",
                "node-name": node,
                "file": file_node,
                "read-only": true,
            }]}),
        )?;
        Ok(())
    }

    fn delete_node(&mut self, node: &str) {
        if let Err(e) = self.qmp.execute("blockdev-del", json!({"node-name": node})) {
            tracing::warn!(node, error = %e, "removing a pod slot's old node");
        }
        self.descriptors.retain(|(name, path)| {
            if name == node {
                let _ = std::fs::remove_file(path);
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_taken_in_order_released_and_broken_ones_never_reused() {
        let mut table = SlotTable::new(2);
        assert_eq!(table.take("a").unwrap(), 0);
        assert_eq!(table.take("b").unwrap(), 1);
        let err = table.take("c").unwrap_err();
        assert!(err.to_string().contains("no free layer-disk slot"), "{err}");
        table.release(0);
        assert_eq!(table.get(0), Some(&Slot::Free));
        assert_eq!(table.take("c").unwrap(), 0);
        assert_eq!(table.get(0), Some(&Slot::Used("c".into())));
        table.mark_broken(1);
        table.release(0);
        assert_eq!(table.take("d").unwrap(), 0);
        assert!(table.take("e").is_err(), "a broken slot came back");
        // Out of range is ignored, not a panic.
        table.release(9);
        table.mark_broken(9);
        assert_eq!(table.get(9), None);
    }

    #[test]
    fn serials_fit_virtio_and_name_slots_from_one() {
        assert_eq!(slot_serial(0), "husk-pod-1");
        assert_eq!(slot_serial(3), "husk-pod-4");
        assert!(slot_serial(POD_SLOTS as usize - 1).len() <= 20);
    }

    #[test]
    fn a_slot_descriptor_pads_the_layers_to_the_slot_size() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.erofs");
        let b = dir.path().join("b.erofs");
        std::fs::write(&a, vec![1u8; 4096]).unwrap();
        std::fs::write(&b, vec![2u8; 1024]).unwrap();
        let empty = dir.path().join("empty.img");
        let text = slot_descriptor(&[a.clone(), b.clone()], &empty).unwrap();
        let extents: Vec<&str> = text.lines().filter(|l| l.starts_with("RW ")).collect();
        assert_eq!(extents.len(), 3, "{text}");
        assert!(extents[0].starts_with("RW 8 FLAT"), "{text}");
        assert!(extents[1].starts_with("RW 2 FLAT"), "{text}");
        let sectors: u64 = extents
            .iter()
            .map(|l| l.split(' ').nth(1).unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(sectors * 512, SLOT_BYTES);
        assert!(extents[2].contains(empty.to_str().unwrap()), "{text}");
    }

    #[test]
    fn qemu_slots_are_read_only_blockdevs_with_pod_serials() {
        let slots = PodSlots::in_dir(Path::new("/r"), 2);
        let args = qemu_args(&slots).unwrap().join(" ");
        assert!(
            args.contains("-qmp unix:/r/qmp.sock,server=on,wait=off"),
            "{args}"
        );
        assert!(
            args.contains(
                "driver=file,node-name=pod-empty-2,filename=/r/pod-empty.img,read-only=on"
            ),
            "{args}"
        );
        assert!(
            args.contains("driver=raw,node-name=pod-1,file=pod-empty-1,read-only=on"),
            "{args}"
        );
        assert!(
            args.contains("virtio-blk-device,drive=pod-2,serial=husk-pod-2"),
            "{args}"
        );
        assert!(!args.contains("pod-3"), "{args}");
    }

    /// The host's side against husk-vmm's own control-socket code: the
    /// request and its descriptors arrive, the slot takes the files.
    #[test]
    fn husk_vmm_slots_are_swapped_over_its_control_socket() {
        use husk_vmm::devices::virtio::block::SlotBacking;
        let dir = tempfile::tempdir().unwrap();
        let slots = PodSlots::in_dir(dir.path(), 2);
        let listener = std::os::unix::net::UnixListener::bind(&slots.control_socket).unwrap();
        let backing = vec![
            (slot_serial(0), SlotBacking::new(SLOT_BYTES)),
            (slot_serial(1), SlotBacking::new(SLOT_BYTES)),
        ];
        let served = backing.clone();
        let vmm = std::thread::spawn(move || {
            for stream in listener.incoming().take(3) {
                husk_vmm::control::serve_one(&stream.unwrap(), &served);
            }
        });
        let layer = dir.path().join("layer.erofs");
        std::fs::write(&layer, [1u8; 1024]).unwrap();
        let mut switch = VmmSlots::new(slots);
        switch.attach(1, std::slice::from_ref(&layer)).unwrap();
        assert!(!backing[0].1.is_attached());
        assert!(backing[1].1.is_attached());
        let odd = dir.path().join("odd.erofs");
        std::fs::write(&odd, [1u8; 100]).unwrap();
        // Refused on the host already: nothing is sent.
        assert!(switch.attach(0, std::slice::from_ref(&odd)).is_err());
        let err = switch.attach(7, std::slice::from_ref(&layer)).unwrap_err();
        assert!(err.to_string().contains("no disk slot"), "{err}");
        switch.detach(1).unwrap();
        assert!(!backing[1].1.is_attached());
        vmm.join().unwrap();
    }

    /// The real swap, against QEMU itself (paused, no guest): the slot's
    /// device is backed by the member's layers, then by the empty file
    /// again, at the same size.
    #[test]
    fn qemu_swaps_a_slots_backing_through_qmp() {
        let qemu = std::env::var_os("HUSK_QEMU").unwrap_or_else(|| "qemu-system-x86_64".into());
        if std::process::Command::new(&qemu)
            .arg("--version")
            .output()
            .is_err()
        {
            husk_test_skip::skip_unless_ci("QEMU (qemu-system-x86_64) is not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let slots = PodSlots::in_dir(dir.path(), 1);
        slots.create_empty().unwrap();
        /// Kills QEMU however the test ends.
        struct Reaped(std::process::Child);
        impl Drop for Reaped {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _qemu = Reaped(
            std::process::Command::new(&qemu)
                .args(["-M", "microvm,acpi=off", "-accel", "tcg", "-nodefaults"])
                .args(["-no-user-config", "-display", "none", "-S"])
                .args(qemu_args(&slots).unwrap())
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut pod = loop {
            match QemuSlots::connect(slots.clone()) {
                Ok(pod) => break pod,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        };
        let layer = dir.path().join("layer.erofs");
        std::fs::write(&layer, [0xabu8; 512]).unwrap();
        // What the guest's disk is backed by now, and its size.
        let backing = |pod: &mut QemuSlots| -> (String, u64) {
            let blocks = pod.qmp.execute("query-block", json!({})).unwrap();
            let slot = blocks
                .as_array()
                .unwrap()
                .iter()
                .find_map(|b| b.get("inserted").filter(|i| i["node-name"] == "pod-1"))
                .expect("the slot's device")
                .clone();
            (
                slot["file"].as_str().unwrap().to_string(),
                slot["image"]["virtual-size"].as_u64().unwrap(),
            )
        };
        let (file, size) = backing(&mut pod);
        assert!(file.ends_with("pod-empty.img"), "{file}");
        assert_eq!(size, SLOT_BYTES);
        pod.attach(0, std::slice::from_ref(&layer)).unwrap();
        let (file, size) = backing(&mut pod);
        assert!(file.contains(".vmdk"), "{file}");
        assert_eq!(size, SLOT_BYTES, "the guest's capacity must not change");
        // A second attach replaces the first (and drops its node).
        pod.attach(0, std::slice::from_ref(&layer)).unwrap();
        assert_eq!(pod.descriptors.len(), 1);
        pod.detach(0).unwrap();
        let (file, _) = backing(&mut pod);
        assert!(file.ends_with("pod-empty.img"), "{file}");
        assert!(pod.descriptors.is_empty());
        let vmdks = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .map(|e| e.path().extension().is_some_and(|x| x == "vmdk"))
                    .unwrap_or(false)
            })
            .count();
        assert_eq!(vmdks, 0, "descriptors left behind");
    }
}
