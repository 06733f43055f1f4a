//! One VM per pod: the sandbox's monitor owns the VM and relays each
//! member's agent traffic; a member's monitor joins that VM instead of
//! booting its own.
//!
//! A member's monitor connects to the sandbox monitor's pod socket
//! (`pod.sock` beside its control socket) and sends one JSON line, a
//! [`JoinRequest`] naming its container and its layer files. The sandbox
//! monitor takes a free layer-disk slot, puts the member's layers on it
//! ([`crate::sandbox::pod`]) and answers with a [`JoinReply`] line (the
//! slot's serial). From then on the connection carries the agent protocol,
//! as a VM's console socket does: the relay sends a Hello, and passes
//! frames both ways, rewriting what makes the member one container among
//! several in the VM:
//! - process ids: the member numbers its processes from 1 as if alone;
//!   in the VM its process `n` is `(slot + 1) << 24 | n` (the sandbox's own
//!   stay below `1 << 24`), so frames from the agent go back by their id;
//! - request ids: the relay's own, mapped back on the response;
//! - container names: every request is the member's (`Start`, `Exec`,
//!   `Stats`, `Update` name it; its create joins the sandbox and must use
//!   its slot); `Shutdown` becomes `RemoveContainer`, after which the slot
//!   is emptied and free again. A member whose monitor goes away is
//!   removed the same way.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use husk_protocol::{
    encode_frame, Event, Frame, FrameDecoder, Hello, ProcessId, Reply, Request, RequestId,
    Response, PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};

use crate::sandbox::agent_client::{AgentClient, AgentError};
use crate::sandbox::pod::{slot_serial, PodError, SlotSwitch, SlotTable};

/// The CRI annotations that make a container part of a pod.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A container's part in a CRI pod, from its spec's annotations.
#[derive(Debug, PartialEq, Eq)]
pub enum CriRole {
    /// The pod's sandbox (its pause container).
    Sandbox,
    /// A container of the pod whose sandbox has this id.
    Member(String),
    /// Not part of a pod.
    Alone,
}

pub fn cri_role(spec: &oci_spec::runtime::Spec) -> CriRole {
    let annotations = spec.annotations().clone().unwrap_or_default();
    match (
        annotations.get(CRI_CONTAINER_TYPE).map(String::as_str),
        annotations.get(CRI_SANDBOX_ID),
    ) {
        (Some("sandbox"), _) => CriRole::Sandbox,
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => {
            CriRole::Member(sandbox.clone())
        }
        _ => CriRole::Alone,
    }
}

/// A container's part in a pod that shares one VM (its state directory
/// under `root`): a CRI sandbox's VM takes its pod's containers in; a
/// container joins its sandbox's VM when that VM takes members (one made
/// by an older husk does not: then, as before, the container gets a VM of
/// its own, with [`own_namespaces`]).
pub fn pod_role(root: &Path, spec: &oci_spec::runtime::Spec) -> Option<super::PodRole> {
    match cri_role(spec) {
        CriRole::Sandbox => Some(super::PodRole::Sandbox {
            slots: crate::sandbox::pod::POD_SLOTS,
        }),
        CriRole::Member(sandbox) => {
            let takes_members = crate::container::state::StateDir::open(root, &sandbox)
                .ok()
                .and_then(|dir| std::fs::read(dir.monitor_config()).ok())
                .and_then(|bytes| serde_json::from_slice::<super::MonitorConfig>(&bytes).ok())
                .is_some_and(|config| matches!(config.pod, Some(super::PodRole::Sandbox { .. })));
            if takes_members {
                Some(super::PodRole::Member {
                    sandbox_root: root.to_path_buf(),
                    sandbox_id: sandbox,
                })
            } else {
                tracing::warn!(
                    "the pod's sandbox {sandbox} has no VM to share: this container gets its own"
                );
                None
            }
        }
        CriRole::Alone => None,
    }
}

/// `spec` with fresh IPC and UTS namespaces (their paths dropped): a pod's
/// container in a VM of its own shares nothing with its sandbox's.
pub fn own_namespaces(spec: &oci_spec::runtime::Spec) -> oci_spec::runtime::Spec {
    use oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};
    let mut spec = spec.clone();
    if let Some(linux) = spec.linux_mut() {
        let namespaces = linux.namespaces().clone().map(|all| {
            all.into_iter()
                .map(|ns| match ns.typ() {
                    LinuxNamespaceType::Ipc | LinuxNamespaceType::Uts if ns.path().is_some() => {
                        LinuxNamespaceBuilder::default()
                            .typ(ns.typ())
                            .build()
                            .unwrap_or(ns)
                    }
                    _ => ns,
                })
                .collect()
        });
        linux.set_namespaces(namespaces);
    }
    spec
}

/// The spec and network of a container for its monitor: a pod member in
/// its sandbox's VM is in the sandbox's network already; one in a VM of
/// its own gets fresh IPC and UTS namespaces; everyone else joins a CNI
/// namespace path as before (`cni::from_spec`).
pub fn spec_network(
    spec: &oci_spec::runtime::Spec,
    id: &str,
    pod: Option<&super::PodRole>,
) -> Result<crate::network::cni::SpecNetwork, crate::network::NetworkError> {
    match (pod, cri_role(spec)) {
        (Some(super::PodRole::Member { .. }), _) => Ok(crate::network::cni::SpecNetwork {
            spec: spec.clone(),
            nics: Vec::new(),
            agent: None,
            release: None,
        }),
        (None, CriRole::Member(_)) => crate::network::cni::from_spec(&own_namespaces(spec), id),
        _ => crate::network::cni::from_spec(spec, id),
    }
}

/// Member process ids live above this shift (see the module docs).
const MEMBER_SHIFT: u32 = 24;
const LOCAL_LIMIT: u32 = 1 << MEMBER_SHIFT;
/// A member's join line, at most (125 layer paths fit many times over).
const MAX_JOIN_LINE: usize = 1 << 20;
/// How long a member may take to send its join line.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for a member that does not read them: more than the
/// credit windows allow means it is stuck; it is dropped.
const MAX_MEMBER_BACKLOG: usize = 32 << 20;

/// What a member's monitor asks when it connects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    pub container_id: String,
    /// Its layer files, bottom first (a concatenated disk's parts).
    pub parts: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinReply {
    /// The member's layers are on the disk with this serial.
    Ok {
        serial: String,
    },
    Error {
        message: String,
    },
}

/// The sandbox's pod socket (its monitor's sockets directory).
pub fn pod_socket(sockets_dir: &Path) -> PathBuf {
    sockets_dir.join("pod.sock")
}

/// Member `slot`'s process `local` as the VM knows it.
pub fn to_global(slot: usize, local: ProcessId) -> Option<ProcessId> {
    let base = u32::try_from(slot + 1).ok()?.checked_shl(MEMBER_SHIFT)?;
    if local == 0 || local >= LOCAL_LIMIT || (slot + 1) >= (1 << (32 - MEMBER_SHIFT)) {
        return None;
    }
    Some(base | local)
}

/// Whose a VM process id is: `None` for the sandbox's own, else the
/// member's slot and its own number.
pub fn from_global(global: ProcessId) -> Option<(usize, ProcessId)> {
    let member = global >> MEMBER_SHIFT;
    (member > 0).then(|| ((member - 1) as usize, global & (LOCAL_LIMIT - 1)))
}

/// What a member's request becomes.
#[derive(Debug, PartialEq)]
pub enum Rewritten {
    /// Send this to the agent.
    Send(Request),
    /// The member is done: remove its container.
    Shutdown,
}

/// Rewrites a request of the member `member` (in `slot`, whose disk is
/// `serial`) for the pod's agent, or refuses it (the reason).
pub fn rewrite_request(
    member: &str,
    sandbox: &str,
    slot: usize,
    request: Request,
) -> Result<Rewritten, String> {
    let serial = slot_serial(slot);
    let global = |local: ProcessId| {
        to_global(slot, local).ok_or_else(|| format!("process id {local} out of range"))
    };
    let own = |named: Option<String>| match named {
        None => Ok(Some(member.to_owned())),
        Some(name) if name == member => Ok(Some(name)),
        Some(name) => Err(format!("{member} may not address container {name}")),
    };
    Ok(Rewritten::Send(match request {
        Request::CreateContainer(mut create) => {
            if create.container_id != member {
                return Err(format!(
                    "{member} may not create container {}",
                    create.container_id
                ));
            }
            if create.scratch.is_some() {
                return Err("a pod member has no scratch disk".into());
            }
            if let Some(layer) = create.layers.iter().find(|l| l.serial != serial) {
                return Err(format!(
                    "layer {} is on disk {}, not the member's {serial}",
                    layer.digest, layer.serial
                ));
            }
            create.init_process = global(create.init_process)?;
            create.sandbox = Some(sandbox.to_owned());
            // The sandbox's network is the pod's.
            create.network = None;
            Request::CreateContainer(create)
        }
        Request::Start { container } => Request::Start {
            container: own(container)?,
        },
        Request::Exec(mut exec) => {
            exec.container = own(exec.container)?;
            exec.process = global(exec.process)?;
            Request::Exec(exec)
        }
        Request::Signal { process, signal } => Request::Signal {
            process: global(process)?,
            signal,
        },
        Request::Wait { process } => Request::Wait {
            process: global(process)?,
        },
        Request::Stats { container } => Request::Stats {
            container: own(container)?,
        },
        Request::Update {
            container,
            resources,
        } => Request::Update {
            container: own(container)?,
            resources,
        },
        Request::CloseStdin { process } => Request::CloseStdin {
            process: global(process)?,
        },
        Request::ResizeTty {
            process,
            rows,
            cols,
        } => Request::ResizeTty {
            process: global(process)?,
            rows,
            cols,
        },
        Request::RemoveContainer { .. } => {
            return Err("a pod member ends with shutdown, not remove".into())
        }
        Request::Shutdown => return Ok(Rewritten::Shutdown),
    }))
}

/// A frame of the member's stdio with its process id made the VM's.
fn stdio_to_agent(slot: usize, frame: Frame) -> Option<Frame> {
    Some(match frame {
        Frame::Data {
            process,
            stream,
            data,
        } => Frame::Data {
            process: to_global(slot, process)?,
            stream,
            data,
        },
        Frame::Credit {
            process,
            stream,
            bytes,
        } => Frame::Credit {
            process: to_global(slot, process)?,
            stream,
            bytes,
        },
        Frame::Eof { process, stream } => Frame::Eof {
            process: to_global(slot, process)?,
            stream,
        },
        _ => return None,
    })
}

/// Which member an agent frame is for (its slot) and the frame as that
/// member numbers it; `None`: the sandbox's own.
fn for_member(frame: &Frame) -> Option<(usize, Frame)> {
    let (slot, local) = match frame {
        Frame::Data { process, .. }
        | Frame::Credit { process, .. }
        | Frame::Eof { process, .. }
        | Frame::Event(Event::ProcessExited { process, .. }) => from_global(*process)?,
        _ => return None,
    };
    let mapped = match frame.clone() {
        Frame::Data { stream, data, .. } => Frame::Data {
            process: local,
            stream,
            data,
        },
        Frame::Credit { stream, bytes, .. } => Frame::Credit {
            process: local,
            stream,
            bytes,
        },
        Frame::Eof { stream, .. } => Frame::Eof {
            process: local,
            stream,
        },
        Frame::Event(Event::ProcessExited { status, .. }) => Frame::Event(Event::ProcessExited {
            process: local,
            status,
        }),
        _ => return None,
    };
    Some((slot, mapped))
}

struct Member {
    id: String,
    stream: UnixStream,
    decoder: FrameDecoder,
    outgoing: Vec<u8>,
    /// Its container exists in the guest.
    created: bool,
    /// RemoveContainer was sent.
    removing: bool,
    /// Its monitor is gone (or misbehaved): nothing more goes to it.
    gone: bool,
}

impl Member {
    fn send(&mut self, frame: &Frame) {
        if self.gone {
            return;
        }
        match encode_frame(frame) {
            Ok(bytes) => self.outgoing.extend_from_slice(&bytes),
            Err(e) => tracing::warn!(member = %self.id, error = %e, "encoding a frame"),
        }
        if self.outgoing.len() > MAX_MEMBER_BACKLOG {
            tracing::warn!(member = %self.id, "a pod member does not read its frames; dropped");
            self.gone = true;
        }
    }

    fn reply(&mut self, id: RequestId, response: Response) {
        self.send(&Frame::Response { id, response });
    }
}

enum Pending {
    /// Answer the member's request `id` (a create, when `create`).
    Forward {
        slot: usize,
        id: RequestId,
        create: bool,
    },
    /// The member's container is being removed; answer its shutdown
    /// request if it asked.
    Remove {
        slot: usize,
        reply_to: Option<RequestId>,
    },
}

/// The sandbox monitor's side: the pod socket, the slots, the members.
pub struct PodRelay {
    sandbox: String,
    agent_version: String,
    listener: UnixListener,
    socket: PathBuf,
    table: SlotTable,
    /// QMP or husk-vmm's control socket.
    switch: Box<dyn SlotSwitch>,
    /// By slot.
    members: Vec<Option<Member>>,
    pending: HashMap<RequestId, Pending>,
}

impl PodRelay {
    pub fn new(
        sandbox: &str,
        agent_version: &str,
        socket: PathBuf,
        switch: Box<dyn SlotSwitch>,
        slots: usize,
    ) -> io::Result<Self> {
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        listener.set_nonblocking(true)?;
        Ok(PodRelay {
            sandbox: sandbox.to_owned(),
            agent_version: agent_version.to_owned(),
            listener,
            socket,
            table: SlotTable::new(slots),
            switch,
            members: (0..slots).map(|_| None).collect(),
            pending: HashMap::new(),
        })
    }

    /// Descriptors to poll: the listener, then each member (with whether
    /// it has output waiting).
    pub fn poll_fds(&self) -> Vec<(BorrowedFd<'_>, bool)> {
        let mut fds = vec![(self.listener.as_fd(), false)];
        for member in self.members.iter().flatten().filter(|m| !m.gone) {
            fds.push((member.stream.as_fd(), !member.outgoing.is_empty()));
        }
        fds
    }

    /// One round: new members, frames from members, output to members.
    pub fn service(&mut self, client: &mut AgentClient) -> Result<(), AgentError> {
        while let Ok((stream, _)) = self.listener.accept() {
            self.admit(stream);
        }
        for slot in 0..self.members.len() {
            self.read_member(slot, client)?;
            self.flush_member(slot);
        }
        Ok(())
    }

    /// A member's join line, a slot for it, the reply and the Hello.
    fn admit(&mut self, stream: UnixStream) {
        let request = read_join(&stream);
        let result = request.and_then(|join| {
            let taken = self
                .members
                .iter()
                .flatten()
                .any(|m| m.id == join.container_id);
            if taken || join.container_id == self.sandbox {
                return Err(format!(
                    "container {} is in the pod already",
                    join.container_id
                ));
            }
            let slot = self
                .table
                .take(&join.container_id)
                .map_err(|e| e.to_string())?;
            if let Err(e) = self.switch.attach(slot, &join.parts) {
                self.table.release(slot);
                return Err(e.to_string());
            }
            Ok((slot, join.container_id))
        });
        let reply = match &result {
            Ok((slot, _)) => JoinReply::Ok {
                serial: slot_serial(*slot),
            },
            Err(message) => JoinReply::Error {
                message: message.clone(),
            },
        };
        let sent = write_line(&stream, &reply);
        let Ok((slot, id)) = result else {
            tracing::warn!(?reply, "a pod member could not join");
            return;
        };
        if let Err(e) = sent.and_then(|()| stream.set_nonblocking(true)) {
            tracing::warn!(member = %id, error = %e, "a pod member left while joining");
            self.empty_slot(slot);
            return;
        }
        tracing::info!(member = %id, slot, "a container joined the pod's VM");
        let mut member = Member {
            id,
            stream,
            decoder: FrameDecoder::new(),
            outgoing: Vec::new(),
            created: false,
            removing: false,
            gone: false,
        };
        member.send(&Frame::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: self.agent_version.clone(),
        }));
        self.members[slot] = Some(member);
    }

    fn read_member(&mut self, slot: usize, client: &mut AgentClient) -> Result<(), AgentError> {
        let Some(member) = self.members[slot].as_mut() else {
            return Ok(());
        };
        let mut frames = Vec::new();
        let mut ended = member.gone;
        let mut buf = [0u8; 64 * 1024];
        while !ended {
            match member.stream.read(&mut buf) {
                Ok(0) => ended = true,
                Ok(n) => {
                    member.decoder.feed(&buf[..n]);
                    loop {
                        match member.decoder.next_frame_sized() {
                            Ok(Some((frame, _))) => frames.push(frame),
                            Ok(None) => break,
                            Err(e) => {
                                tracing::warn!(member = %member.id, error = %e, "a pod member's channel broke");
                                ended = true;
                                break;
                            }
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => ended = true,
            }
        }
        for frame in frames {
            self.relay_from_member(slot, frame, client)?;
        }
        if ended {
            self.member_gone(slot, client)?;
        }
        Ok(())
    }

    fn relay_from_member(
        &mut self,
        slot: usize,
        frame: Frame,
        client: &mut AgentClient,
    ) -> Result<(), AgentError> {
        let Some(member) = self.members[slot].as_mut() else {
            return Ok(());
        };
        match frame {
            Frame::Request { id, request } => {
                let create = matches!(request, Request::CreateContainer(_));
                match rewrite_request(&member.id, &self.sandbox, slot, request) {
                    Ok(Rewritten::Send(request)) => {
                        let global = client.send_request(request)?;
                        self.pending
                            .insert(global, Pending::Forward { slot, id, create });
                    }
                    Ok(Rewritten::Shutdown) => {
                        if member.created && !member.removing {
                            member.removing = true;
                            let container = member.id.clone();
                            let global =
                                client.send_request(Request::RemoveContainer { container })?;
                            self.pending.insert(
                                global,
                                Pending::Remove {
                                    slot,
                                    reply_to: Some(id),
                                },
                            );
                        } else if !member.removing {
                            member.reply(id, Response::Ok(Reply::Done));
                            self.flush_member(slot);
                            self.empty_slot(slot);
                        }
                    }
                    Err(message) => member.reply(
                        id,
                        Response::Error(husk_protocol::ErrorReply {
                            step: "pod".into(),
                            message,
                        }),
                    ),
                }
            }
            frame @ (Frame::Data { .. } | Frame::Credit { .. } | Frame::Eof { .. }) => {
                match stdio_to_agent(slot, frame) {
                    Some(frame) => client.queue(&frame)?,
                    None => {
                        tracing::warn!(member = %member.id, "a pod member sent a bad process id");
                        member.gone = true;
                    }
                }
            }
            other => {
                tracing::warn!(member = %member.id, kind = other.kind().name(), "unexpected frame from a pod member");
                member.gone = true;
            }
        }
        Ok(())
    }

    /// The member's monitor is gone: remove its container if it exists.
    fn member_gone(&mut self, slot: usize, client: &mut AgentClient) -> Result<(), AgentError> {
        let Some(member) = self.members[slot].as_mut() else {
            return Ok(());
        };
        member.gone = true;
        if member.created && !member.removing {
            member.removing = true;
            let container = member.id.clone();
            tracing::info!(member = %container, "a pod member's monitor went away; removing it");
            let global = client.send_request(Request::RemoveContainer { container })?;
            self.pending.insert(
                global,
                Pending::Remove {
                    slot,
                    reply_to: None,
                },
            );
        } else if !member.removing {
            self.empty_slot(slot);
        }
        Ok(())
    }

    /// The slot's disk reads nothing again and is free.
    fn empty_slot(&mut self, slot: usize) {
        match self.switch.detach(slot) {
            Ok(()) => self.table.release(slot),
            Err(e) => {
                tracing::warn!(slot, error = %e, "emptying a pod slot; it is not reused");
                self.table.mark_broken(slot);
            }
        }
        // Whatever it had not read yet is lost with it.
        if let Some(member) = self.members[slot].take() {
            let _ = member.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn flush_member(&mut self, slot: usize) {
        let Some(member) = self.members[slot].as_mut() else {
            return;
        };
        while !member.gone && !member.outgoing.is_empty() {
            match member.stream.write(&member.outgoing) {
                Ok(0) => member.gone = true,
                Ok(n) => {
                    member.outgoing.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => member.gone = true,
            }
        }
        if member.gone {
            member.outgoing.clear();
        }
    }

    /// Takes the agent frames that are for members; returns the others.
    pub fn route(&mut self, frame: Frame) -> Option<Frame> {
        match &frame {
            Frame::Response { id, .. } if self.pending.contains_key(id) => {
                let Frame::Response { id, response } = frame else {
                    return None;
                };
                self.answer(id, response);
                None
            }
            Frame::Event(Event::OomKilled {
                kills,
                container: Some(container),
            }) => {
                let kills = *kills;
                match self
                    .members
                    .iter_mut()
                    .flatten()
                    .find(|m| &m.id == container)
                {
                    Some(member) => {
                        member.send(&Frame::Event(Event::OomKilled {
                            kills,
                            container: None,
                        }));
                        None
                    }
                    None => Some(frame),
                }
            }
            _ => match for_member(&frame) {
                Some((slot, mapped)) => {
                    if let Some(member) = self.members.get_mut(slot).and_then(Option::as_mut) {
                        member.send(&mapped);
                    }
                    None
                }
                None => Some(frame),
            },
        }
    }

    fn answer(&mut self, global: RequestId, response: Response) {
        match self.pending.remove(&global) {
            Some(Pending::Forward { slot, id, create }) => {
                if let Some(member) = self.members.get_mut(slot).and_then(Option::as_mut) {
                    if create && matches!(response, Response::Ok(_)) {
                        member.created = true;
                    }
                    member.reply(id, response);
                }
            }
            Some(Pending::Remove { slot, reply_to }) => {
                let removed = matches!(response, Response::Ok(_));
                if let (Some(member), Some(id)) = (
                    self.members.get_mut(slot).and_then(Option::as_mut),
                    reply_to,
                ) {
                    member.reply(id, response.clone());
                }
                self.flush_member(slot);
                if removed {
                    self.empty_slot(slot);
                } else {
                    tracing::warn!(
                        slot,
                        ?response,
                        "removing a pod member failed; its slot is not reused"
                    );
                    self.table.mark_broken(slot);
                    self.members[slot] = None;
                }
            }
            None => {}
        }
    }
}

impl Drop for PodRelay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn read_join(stream: &UnixStream) -> Result<JoinRequest, String> {
    stream
        .set_read_timeout(Some(JOIN_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let line = read_line(stream)?;
    serde_json::from_slice(&line).map_err(|e| format!("bad join request: {e}"))
}

/// One line, read byte by byte: what follows it is frames, for another
/// reader.
pub fn read_line(mut stream: &UnixStream) -> Result<Vec<u8>, String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err("the peer closed the connection".into()),
            Ok(_) if byte[0] == b'\n' => return Ok(line),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
        if line.len() > MAX_JOIN_LINE {
            return Err("line too long".into());
        }
    }
}

pub fn write_line(mut stream: &UnixStream, value: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    stream.write_all(&line)
}

/// Why a member could not join its pod's VM.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("reaching the pod's sandbox at {path}: {source}")]
    Connect { path: PathBuf, source: io::Error },
    #[error("joining the pod's VM: {0}")]
    Refused(String),
    #[error(transparent)]
    Pod(#[from] PodError),
}

/// The member's side: connects, asks for a slot; the connection (ready
/// for the agent protocol) and the slot's serial.
pub fn join(
    socket: &Path,
    container_id: &str,
    parts: &[PathBuf],
) -> Result<(UnixStream, String), JoinError> {
    let stream = UnixStream::connect(socket).map_err(|source| JoinError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    let request = JoinRequest {
        container_id: container_id.to_owned(),
        parts: parts.to_vec(),
    };
    write_line(&stream, &request).map_err(|e| JoinError::Refused(e.to_string()))?;
    // Attaching the disk is a QMP round trip: quick, but QEMU may be busy.
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| JoinError::Refused(e.to_string()))?;
    let line = read_line(&stream).map_err(JoinError::Refused)?;
    stream
        .set_read_timeout(None)
        .map_err(|e| JoinError::Refused(e.to_string()))?;
    match serde_json::from_slice(&line) {
        Ok(JoinReply::Ok { serial }) => Ok((stream, serial)),
        Ok(JoinReply::Error { message }) => Err(JoinError::Refused(message)),
        Err(e) => Err(JoinError::Refused(format!("bad reply: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_protocol::{CreateContainer, ExecProcess, ExitStatus, LayerDisk, Stream};

    #[test]
    fn cri_annotations_give_the_role_and_a_lone_member_owns_its_namespaces() {
        let spec = |json: &str| -> oci_spec::runtime::Spec { serde_json::from_str(json).unwrap() };
        let sandbox = spec(&format!(
            r#"{{"ociVersion":"1.0.2","annotations":{{"{CRI_CONTAINER_TYPE}":"sandbox"}}}}"#
        ));
        assert_eq!(cri_role(&sandbox), CriRole::Sandbox);
        let member = spec(&format!(
            r#"{{"ociVersion":"1.0.2","annotations":{{"{CRI_CONTAINER_TYPE}":"container","{CRI_SANDBOX_ID}":"p1"}},
                "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"ipc","path":"/proc/9/ns/ipc"}},{{"type":"uts","path":"/proc/9/ns/uts"}},{{"type":"network","path":"/run/netns/cni-1"}}]}}}}"#
        ));
        assert_eq!(cri_role(&member), CriRole::Member("p1".into()));
        assert_eq!(cri_role(&spec(r#"{"ociVersion":"1.0.2"}"#)), CriRole::Alone);
        // No such sandbox under this root: a VM of its own.
        let root = tempfile::tempdir().unwrap();
        assert_eq!(pod_role(root.path(), &member), None);
        assert!(matches!(
            pod_role(root.path(), &sandbox),
            Some(crate::container::monitor::PodRole::Sandbox { .. })
        ));
        let own = own_namespaces(&member);
        let paths: Vec<_> = own
            .linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|ns| (ns.typ(), ns.path().is_some()))
            .collect();
        use oci_spec::runtime::LinuxNamespaceType as T;
        assert_eq!(
            paths,
            vec![
                (T::Pid, false),
                (T::Ipc, false),
                (T::Uts, false),
                (T::Network, true)
            ]
        );
    }

    #[test]
    fn member_process_ids_map_both_ways_and_never_reach_the_sandboxs() {
        assert_eq!(to_global(0, 1), Some((1 << 24) | 1));
        assert_eq!(to_global(3, 7), Some((4 << 24) | 7));
        assert_eq!(from_global((4 << 24) | 7), Some((3, 7)));
        assert_eq!(from_global(1), None, "the sandbox's own");
        assert_eq!(from_global((1 << 24) - 1), None);
        assert_eq!(to_global(0, 0), None);
        assert_eq!(
            to_global(0, 1 << 24),
            None,
            "would spill into the next member"
        );
        assert_eq!(to_global(255, 1), None, "no 256th member");
        for slot in 0..4 {
            for local in [1, 2, 99, (1 << 24) - 1] {
                assert_eq!(
                    from_global(to_global(slot, local).unwrap()),
                    Some((slot, local))
                );
            }
        }
    }

    fn create(id: &str, serial: &str) -> Request {
        Request::CreateContainer(Box::new(CreateContainer {
            container_id: id.into(),
            init_process: 1,
            spec: oci_spec::runtime::Spec::default(),
            layers: vec![LayerDisk {
                serial: serial.into(),
                digest: "sha256:1".into(),
                offset: 0,
                length: Some(512),
            }],
            scratch: None,
            stdin: false,
            network: None,
            sandbox: None,
        }))
    }

    #[test]
    fn a_members_create_joins_the_sandbox_on_its_own_slot() {
        let Rewritten::Send(Request::CreateContainer(c)) =
            rewrite_request("app", "pod", 1, create("app", "husk-pod-2")).unwrap()
        else {
            panic!("not a create");
        };
        assert_eq!(c.sandbox.as_deref(), Some("pod"));
        assert_eq!(c.init_process, (2 << 24) | 1);
        // Another container's id, another slot's disk: refused.
        assert!(rewrite_request("app", "pod", 1, create("pod", "husk-pod-2")).is_err());
        let err = rewrite_request("app", "pod", 1, create("app", "husk-pod-1")).unwrap_err();
        assert!(err.contains("not the member's husk-pod-2"), "{err}");
        assert!(rewrite_request("app", "pod", 1, create("app", "husk-layers")).is_err());
    }

    #[test]
    fn member_requests_name_the_member_and_its_processes() {
        let r = |req| rewrite_request("app", "pod", 0, req);
        assert_eq!(
            r(Request::Start { container: None }).unwrap(),
            Rewritten::Send(Request::Start {
                container: Some("app".into())
            })
        );
        assert!(r(Request::Start {
            container: Some("pod".into())
        })
        .is_err());
        assert_eq!(
            r(Request::Stats { container: None }).unwrap(),
            Rewritten::Send(Request::Stats {
                container: Some("app".into())
            })
        );
        assert_eq!(
            r(Request::Signal {
                process: 1,
                signal: 9
            })
            .unwrap(),
            Rewritten::Send(Request::Signal {
                process: (1 << 24) | 1,
                signal: 9
            })
        );
        let exec = Request::Exec(Box::new(ExecProcess {
            container: None,
            process: 2,
            spec: Default::default(),
            stdin: false,
        }));
        let Rewritten::Send(Request::Exec(e)) = r(exec).unwrap() else {
            panic!("not an exec");
        };
        assert_eq!(
            (e.container.as_deref(), e.process),
            (Some("app"), (1 << 24) | 2)
        );
        assert_eq!(r(Request::Shutdown).unwrap(), Rewritten::Shutdown);
        assert!(r(Request::RemoveContainer {
            container: "pod".into()
        })
        .is_err());
        assert!(r(Request::Wait { process: 0 }).is_err());
    }

    #[test]
    fn agent_frames_go_to_their_member_with_its_own_numbers() {
        let data = Frame::Data {
            process: (2 << 24) | 1,
            stream: Stream::Stdout,
            data: b"hi".to_vec(),
        };
        assert_eq!(
            for_member(&data),
            Some((
                1,
                Frame::Data {
                    process: 1,
                    stream: Stream::Stdout,
                    data: b"hi".to_vec()
                }
            ))
        );
        let exited = Frame::Event(Event::ProcessExited {
            process: (1 << 24) | 3,
            status: ExitStatus::exited(0),
        });
        assert!(matches!(
            for_member(&exited),
            Some((0, Frame::Event(Event::ProcessExited { process: 3, .. })))
        ));
        let own = Frame::Eof {
            process: 1,
            stream: Stream::Stderr,
        };
        assert_eq!(for_member(&own), None);
        assert_eq!(
            stdio_to_agent(
                0,
                Frame::Credit {
                    process: 1,
                    stream: Stream::Stdout,
                    bytes: 5
                }
            ),
            Some(Frame::Credit {
                process: (1 << 24) | 1,
                stream: Stream::Stdout,
                bytes: 5
            })
        );
        assert_eq!(
            stdio_to_agent(
                0,
                Frame::Eof {
                    process: 0,
                    stream: Stream::Stdin
                }
            ),
            None
        );
    }

    #[test]
    fn join_lines_round_trip_and_stop_at_the_newline() {
        let (a, b) = UnixStream::pair().unwrap();
        write_line(
            &a,
            &JoinReply::Ok {
                serial: "husk-pod-1".into(),
            },
        )
        .unwrap();
        (&a).write_all(b"HK-after").unwrap();
        let line = read_line(&b).unwrap();
        let reply: JoinReply = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            reply,
            JoinReply::Ok {
                serial: "husk-pod-1".into()
            }
        );
        let mut rest = [0u8; 8];
        (&b).read_exact(&mut rest).unwrap();
        assert_eq!(
            &rest, b"HK-after",
            "the line reader took bytes past its line"
        );
    }
}
