//! A tiny host-side client for debugging the agent in a VM by hand:
//! connects to the agent's console socket, creates a container from the
//! oci-spec default spec with the given command over layer disks, streams
//! its output and exits with its status.
//!
//! `cargo run -p husk-agent --example client -- SOCKET LAYER_SERIAL[,SERIAL..] [--stdin] [--tty] [--memory BYTES] [--pids N] [--exec] [--signal N] [--seccomp FILE] [--user UID:GID] [--scratch SERIAL] -- CMD [ARG..]`
//!
//! `--tty` also resizes the pty to 40x100 right after start.
//! `--signal N` signals the init process right after start; `--seccomp
//! FILE` sets linux.seccomp from an OCI JSON profile; `--user UID:GID`.
//!
//! `--stdin` sends this process's whole stdin (read up front); `--exec`
//! also runs `CMD` a second time with Exec once the container runs.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use husk_agent::protocol::{
    expect_hello, read_frame, write_frame, CreateContainer, Event, ExecProcess, Frame, LayerDisk,
    Reply, Request, Response, SendCredit, Stream,
};
use oci_spec::runtime::{
    LinuxBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder, Spec,
};

const INIT: u32 = 1;
const EXEC: u32 = 2;

struct Options {
    socket: String,
    layers: Vec<String>,
    stdin: bool,
    tty: bool,
    memory: Option<i64>,
    pids: Option<i64>,
    exec: bool,
    signal: Option<i32>,
    seccomp: Option<String>,
    user: Option<(u32, u32)>,
    scratch: Option<String>,
    command: Vec<String>,
}

fn parse() -> anyhow::Result<Options> {
    let mut args = std::env::args().skip(1);
    let socket = args.next().context("SOCKET")?;
    let layers = args
        .next()
        .context("LAYER_SERIALS")?
        .split(',')
        .map(str::to_owned)
        .collect();
    let mut options = Options {
        socket,
        layers,
        stdin: false,
        tty: false,
        memory: None,
        pids: None,
        exec: false,
        signal: None,
        seccomp: None,
        user: None,
        scratch: None,
        command: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--stdin" => options.stdin = true,
            "--tty" => options.tty = true,
            "--exec" => options.exec = true,
            "--memory" => options.memory = Some(args.next().context("BYTES")?.parse()?),
            "--pids" => options.pids = Some(args.next().context("N")?.parse()?),
            "--signal" => options.signal = Some(args.next().context("SIGNAL")?.parse()?),
            "--scratch" => options.scratch = Some(args.next().context("SERIAL")?),
            "--seccomp" => options.seccomp = Some(args.next().context("FILE")?),
            "--user" => {
                let spec = args.next().context("UID:GID")?;
                let (uid, gid) = spec.split_once(':').context("UID:GID")?;
                options.user = Some((uid.parse()?, gid.parse()?));
            }
            "--" => {
                options.command = args.by_ref().collect();
            }
            other => bail!("unknown flag {other}"),
        }
    }
    if options.command.is_empty() {
        bail!("no command");
    }
    Ok(options)
}

fn spec(options: &Options) -> anyhow::Result<Spec> {
    let mut spec = Spec::default();
    let mut process = spec.process().clone().context("default process")?;
    process.set_args(Some(options.command.clone()));
    process.set_terminal(Some(options.tty));
    if let Some((uid, gid)) = options.user {
        let mut user = process.user().clone();
        user.set_uid(uid);
        user.set_gid(gid);
        process.set_user(user);
    }
    spec.set_process(Some(process));
    spec.set_hostname(Some("husk-test".into()));
    // The default spec has a read-only root; husk's upper layer is writable.
    if let Some(mut root) = spec.root().clone() {
        root.set_readonly(Some(false));
        spec.set_root(Some(root));
    }
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(memory) = options.memory {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(memory).build()?);
    }
    if let Some(pids) = options.pids {
        resources = resources.pids(LinuxPidsBuilder::default().limit(pids).build()?);
    }
    let default_linux = spec.linux().clone().unwrap_or_default();
    let mut linux = LinuxBuilder::default()
        .resources(resources.build()?)
        .build()?;
    linux.set_namespaces(default_linux.namespaces().clone());
    linux.set_masked_paths(default_linux.masked_paths().clone());
    linux.set_readonly_paths(default_linux.readonly_paths().clone());
    if let Some(path) = &options.seccomp {
        linux.set_seccomp(Some(serde_json::from_slice(&std::fs::read(path)?)?));
    }
    spec.set_linux(Some(linux));
    Ok(spec)
}

fn main() -> anyhow::Result<()> {
    let options = parse()?;
    let stream = UnixStream::connect(&options.socket).context("connect")?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let mut reader = stream.try_clone()?;
    let mut writer = stream;
    let hello = expect_hello(&mut reader).context("hello")?;
    eprintln!(
        "[client] agent {} (protocol {})",
        hello.agent_version, hello.protocol_version
    );

    let (frames_tx, frames) = mpsc::channel();
    std::thread::spawn(move || loop {
        let frame = read_frame(&mut reader);
        let stop = frame.is_err();
        if frames_tx.send(frame).is_err() || stop {
            return;
        }
    });

    let mut next_id = 1;
    let mut request = |writer: &mut UnixStream, request: Request| -> anyhow::Result<u32> {
        let id = next_id;
        next_id += 1;
        write_frame(writer, &Frame::Request { id, request })?;
        Ok(id)
    };

    let create = CreateContainer {
        container_id: "test".into(),
        init_process: INIT,
        spec: spec(&options)?,
        layers: options
            .layers
            .iter()
            .map(|serial| LayerDisk {
                serial: serial.clone(),
                digest: format!("sha256:{serial}"),
                offset: 0,
                length: None,
            })
            .collect(),
        scratch: options
            .scratch
            .clone()
            .map(|serial| husk_agent::protocol::ScratchDisk { serial }),
        stdin: options.stdin,
        network: None,
        sandbox: None,
    };
    let mut pending_start = Some(request(
        &mut writer,
        Request::CreateContainer(Box::new(create)),
    )?);
    let mut stdin_data: VecDeque<u8> = VecDeque::new();
    if options.stdin {
        let mut all = Vec::new();
        std::io::stdin().read_to_end(&mut all)?;
        stdin_data.extend(all);
    }
    let mut stdin_credit = SendCredit::new();
    let mut stdin_open = options.stdin;
    let mut started = false;
    let mut exec_sent = false;
    let mut init_status = None;
    let mut exec_done = !options.exec;

    loop {
        if started && stdin_open {
            while !stdin_data.is_empty() {
                let n = stdin_credit.allowance(stdin_data.len());
                if n == 0 {
                    break;
                }
                let data: Vec<u8> = stdin_data.drain(..n).collect();
                stdin_credit.consume(n);
                write_frame(
                    &mut writer,
                    &Frame::Data {
                        process: INIT,
                        stream: Stream::Stdin,
                        data,
                    },
                )?;
            }
            if stdin_data.is_empty() {
                write_frame(
                    &mut writer,
                    &Frame::Eof {
                        process: INIT,
                        stream: Stream::Stdin,
                    },
                )?;
                stdin_open = false;
            }
        }
        let frame = frames
            .recv()
            .context("reader gone")?
            .context("read frame")?;
        match frame {
            Frame::Response { id, response } => match response {
                Response::Error(err) => bail!("agent error (request {id}): {err}"),
                Response::Ok(Reply::Created { pid }) => {
                    eprintln!("[client] created, guest pid {pid}");
                    let _ = pending_start.take();
                    request(&mut writer, Request::Start { container: None })?;
                }
                Response::Ok(Reply::Done) if !started => {
                    started = true;
                    eprintln!("[client] started");
                    if options.tty {
                        let resize = Request::ResizeTty {
                            process: INIT,
                            rows: 40,
                            cols: 100,
                        };
                        request(&mut writer, resize)?;
                    }
                    if let Some(signal) = options.signal {
                        request(
                            &mut writer,
                            Request::Signal {
                                process: INIT,
                                signal,
                            },
                        )?;
                    }
                    if options.exec && !exec_sent {
                        exec_sent = true;
                        let mut process = spec(&options)?.process().clone().context("process")?;
                        process.set_terminal(Some(false));
                        request(
                            &mut writer,
                            Request::Exec(Box::new(ExecProcess {
                                container: None,
                                process: EXEC,
                                spec: process,
                                stdin: false,
                            })),
                        )?;
                    }
                }
                Response::Ok(reply) => eprintln!("[client] reply {id}: {reply:?}"),
            },
            Frame::Data {
                process,
                stream,
                data,
            } => {
                let tag = if process == EXEC { "[exec] " } else { "" };
                match stream {
                    Stream::Stderr => {
                        std::io::stderr().write_all(tag.as_bytes())?;
                        std::io::stderr().write_all(&data)?;
                    }
                    _ => {
                        std::io::stdout().write_all(tag.as_bytes())?;
                        std::io::stdout().write_all(&data)?;
                        std::io::stdout().flush()?;
                    }
                }
                // Consumed at once: grant it back.
                write_frame(
                    &mut writer,
                    &Frame::Credit {
                        process,
                        stream,
                        bytes: data.len() as u32,
                    },
                )?;
            }
            Frame::Credit {
                stream: Stream::Stdin,
                bytes,
                ..
            } => stdin_credit.grant(bytes)?,
            Frame::Event(Event::ProcessExited { process, status }) => {
                eprintln!("[client] process {process} exited: {status:?}");
                if process == INIT {
                    init_status = Some(status);
                } else {
                    exec_done = true;
                }
            }
            Frame::Event(Event::Fatal { message }) => bail!("agent fatal: {message}"),
            other => eprintln!("[client] {other:?}"),
        }
        if let (Some(status), true) = (init_status, exec_done) {
            request(&mut writer, Request::Stats { container: None })?;
            request(&mut writer, Request::Shutdown)?;
            // Print the remaining replies (stats, shutdown) until the VM goes.
            while let Ok(Ok(frame)) = frames.recv_timeout(Duration::from_secs(10)) {
                eprintln!("[client] {frame:?}");
            }
            std::process::exit(status.shell_code());
        }
    }
}
