//! A throwaway OCI registry for the pull tests: Debian's `docker-registry`
//! (distribution) as a child process on a loopback port, its storage in a
//! temporary directory, optionally with TLS (a CA made here with the
//! `openssl` CLI) and htpasswd basic auth (`htpasswd -B`); images are put
//! into it with `skopeo copy`. Also a TCP relay that can cut a download
//! half-way, for the resume tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long a registry may take to say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Why this host cannot run registry tests (missing packages), if so.
pub fn unavailable() -> Option<String> {
    for (tool, package) in [
        ("docker-registry", "docker-registry"),
        ("skopeo", "skopeo"),
        ("htpasswd", "apache2-utils"),
        ("openssl", "openssl"),
        ("curl", "curl"),
    ] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Some(format!(
                "{tool} is not installed (apt-get install {package})"
            ));
        }
    }
    None
}

/// TLS material: a CA and a server certificate for 127.0.0.1 it signed.
pub struct Tls {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a self-signed CA and a certificate for `127.0.0.1`/`localhost`.
pub fn make_tls(dir: &Path) -> Tls {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=husk test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("writing ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.crt",
    ]);
    Tls {
        ca_cert: dir.join("ca.crt"),
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    }
}

/// An htpasswd file (bcrypt, as distribution requires) with one user.
pub fn make_htpasswd(dir: &Path, user: &str, password: &str) -> PathBuf {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, password])
        .output()
        .expect("running htpasswd");
    assert!(out.status.success(), "htpasswd failed");
    let path = dir.join("htpasswd");
    std::fs::write(&path, &out.stdout).expect("writing htpasswd");
    path
}

/// A free loopback port (bound, then released for the registry).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

pub struct RegistryConfig {
    pub storage: PathBuf,
    pub port: u16,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub htpasswd: Option<PathBuf>,
    /// Bearer-token auth: the token server's realm URL and the certificate
    /// its tokens are signed with.
    pub token: Option<(String, PathBuf)>,
}

pub struct Registry {
    child: Option<Child>,
    pub config: RegistryConfig,
    /// The registry's own log (stderr), for failure messages.
    pub log: Arc<Mutex<String>>,
    _config_dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry and waits until it says it listens.
    pub fn start(config: RegistryConfig) -> Registry {
        let config_dir = tempfile::tempdir().expect("temp dir");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{}\n  secret: husk-test\n",
            config.storage.display(),
            config.port
        );
        if let Some((cert, key)) = &config.tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some((realm, cert)) = &config.token {
            yaml.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                cert.display()
            ));
        }
        if let Some(htpasswd) = &config.htpasswd {
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: husk-test\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let path = config_dir.path().join("config.yml");
        std::fs::write(&path, yaml).expect("writing registry config");
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting docker-registry");
        let log = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let thread_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                let mut log = thread_log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        if ready_rx.recv_timeout(START_TIMEOUT).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "docker-registry did not start within {START_TIMEOUT:?}:\n{}",
                log.lock().unwrap()
            );
        }
        Registry {
            child: Some(child),
            config,
            log,
            _config_dir: config_dir,
        }
    }

    /// A plain-HTTP registry on a free port with its storage in `storage`.
    pub fn plain(storage: &Path) -> Registry {
        Registry::start(RegistryConfig {
            storage: storage.to_path_buf(),
            port: free_port(),
            tls: None,
            htpasswd: None,
            token: None,
        })
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.config.port)
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same registry again (same storage and port).
    pub fn restart(&mut self) {
        self.kill();
        let config = RegistryConfig {
            storage: self.config.storage.clone(),
            port: self.config.port,
            tls: self.config.tls.clone(),
            htpasswd: self.config.htpasswd.clone(),
            token: self.config.token.clone(),
        };
        *self = Registry::start(config);
    }

    /// Where the registry keeps a blob's bytes.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.config
            .storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `skopeo copy --all SRC DEST` (e.g. `oci:DIR:tag`,
/// `docker://127.0.0.1:PORT/name:tag`) with extra flags; panics on failure.
pub fn skopeo(args: &[&str]) -> String {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running skopeo");
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Pushes an OCI layout directory's image (by its tag) to a plain registry.
pub fn push_layout(layout: &Path, tag: &str, registry: &str, name: &str) {
    skopeo(&[
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("docker://{registry}/{name}"),
    ]);
}

/// A TCP relay to a registry that can cut a connection once it has passed
/// `cut_after` bytes towards the client (mid-blob), after telling the test
/// (`cut` receives the relayed count) and waiting for its go-ahead, so the
/// test can kill the registry first.
pub struct Relay {
    pub port: u16,
    cut_after: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    pub cut: mpsc::Receiver<u64>,
    go_ahead: mpsc::Sender<()>,
}

impl Relay {
    pub fn start(upstream: u16, cut_after: u64) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the relay");
        let port = listener.local_addr().expect("relay address").port();
        let cut_after = Arc::new(AtomicU64::new(cut_after));
        let stop = Arc::new(AtomicBool::new(false));
        let (cut_tx, cut_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let go_rx = Arc::new(Mutex::new(go_rx));
        let (limit, stopping) = (cut_after.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let (limit, cut_tx, go_rx) = (limit.clone(), cut_tx.clone(), go_rx.clone());
                std::thread::spawn(move || relay(client, server, limit, cut_tx, go_rx));
            }
        });
        Relay {
            port,
            cut_after,
            stop,
            cut: cut_rx,
            go_ahead: go_tx,
        }
    }

    /// From now on, relay everything.
    pub fn disarm(&self) {
        self.cut_after.store(u64::MAX, Ordering::SeqCst);
    }

    /// Lets the armed connection be cut.
    pub fn release(&self) {
        let _ = self.go_ahead.send(());
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.release();
    }
}

fn relay(
    client: TcpStream,
    server: TcpStream,
    limit: Arc<AtomicU64>,
    cut: mpsc::Sender<u64>,
    go_ahead: Arc<Mutex<mpsc::Receiver<()>>>,
) {
    let (mut client_read, mut server_write) = (
        client.try_clone().expect("clone"),
        server.try_clone().expect("clone"),
    );
    // Requests go through untouched.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut client_read, &mut server_write);
        let _ = server_write.shutdown(Shutdown::Write);
    });
    let (mut server_read, mut client_write) = (server, client);
    let mut buffer = vec![0u8; 64 * 1024];
    let mut passed = 0u64;
    loop {
        let n = match server_read.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let cut_after = limit.load(Ordering::SeqCst);
        let allowed = (cut_after.saturating_sub(passed) as usize).min(n);
        if client_write.write_all(&buffer[..allowed]).is_err() {
            break;
        }
        passed += allowed as u64;
        if allowed < n {
            let _ = client_write.flush();
            let _ = cut.send(passed);
            let _ = go_ahead
                .lock()
                .unwrap()
                .recv_timeout(Duration::from_secs(60));
            break;
        }
    }
    let _ = client_write.shutdown(Shutdown::Both);
    let _ = server_read.shutdown(Shutdown::Both);
}

/// Pushes an image to a plain-HTTP registry exactly as built (blobs and
/// manifest byte for byte) with `curl` and the distribution API's two-step
/// upload: skopeo compresses uncompressed layers on the way to a registry,
/// and the tests need plain layers and known blob digests there.
pub fn push_raw(host: &str, repository: &str, tag: &str, image: &crate::fixtures::BuiltImage) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut blobs: Vec<(&str, &[u8])> = vec![(image.id.as_str(), image.config.as_slice())];
    for layer in &image.layers {
        blobs.push((layer.digest.as_str(), layer.blob.as_slice()));
    }
    let curl = |args: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body"])
            .args(args)
            .output()
            .expect("running curl");
        assert!(
            out.status.success(),
            "curl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (digest, bytes) in blobs {
        let file = dir.path().join(digest.trim_start_matches("sha256:"));
        std::fs::write(&file, bytes).expect("writing a blob");
        let headers = curl(&[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-X",
            "POST",
            &format!("http://{host}/v2/{repository}/blobs/uploads/"),
        ]);
        let location = headers
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("location")
                    .then(|| value.trim().to_string())
            })
            .expect("upload location");
        let location = if location.starts_with('/') {
            format!("http://{host}{location}")
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        curl(&[
            "-X",
            "PUT",
            "-H",
            "Content-Type: application/octet-stream",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{location}{separator}digest={digest}"),
        ]);
    }
    let manifest = dir.path().join("manifest.json");
    std::fs::write(&manifest, &image.manifest).expect("writing the manifest");
    curl(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {}", crate::fixtures::OCI_MANIFEST),
        "--data-binary",
        &format!("@{}", manifest.display()),
        &format!("http://{host}/v2/{repository}/manifests/{tag}"),
    ]);
}

pub const TOKEN_SERVICE: &str = "husk-test-registry";
pub const TOKEN_ISSUER: &str = "husk-test-issuer";

/// A token server for a registry with bearer-token auth, as Docker Hub's
/// `auth.docker.io` is to its registry: `GET /token?scope=…&service=…`
/// with basic credentials answers `{"token": JWT}`, the JWT signed (RS256,
/// with the `openssl` CLI) by the key of a certificate the registry trusts
/// (sent in the header's x5c) and granting the scope asked for; wrong
/// credentials get 401. The HTTP is a dozen lines over std's TcpListener:
/// one request per connection, and no HTTP server crate is in the tree.
pub struct TokenServer {
    pub port: u16,
    stop: Arc<AtomicBool>,
}

impl TokenServer {
    pub fn start(cert: &Path, key: &Path, user: &str, password: &str) -> TokenServer {
        use base64::Engine as _;
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(cert)
            .output()
            .expect("openssl x509");
        assert!(der.status.success(), "openssl x509 -outform DER failed");
        let x5c = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the token server");
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let key = key.to_path_buf();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = answer(stream, &expected, &x5c, &key);
            }
        });
        TokenServer { port, stop }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn answer(mut stream: TcpStream, expected: &str, x5c: &str, key: &Path) -> std::io::Result<()> {
    use base64::Engine as _;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut authorization = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    let respond = |stream: &mut TcpStream, status: &str, body: &str| {
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if authorization.as_deref() != Some(expected) {
        return respond(
            &mut stream,
            "401 Unauthorized",
            r#"{"details":"bad credentials"}"#,
        );
    }
    // scope=repository:NAME:ACTIONS (percent-encoded ':' and ',').
    let query = request_line
        .split_whitespace()
        .nth(1)
        .and_then(|target| target.split_once('?'))
        .map(|(_, q)| q.to_string())
        .unwrap_or_default();
    let mut access = Vec::new();
    for pair in query.split('&') {
        let Some(scope) = pair.strip_prefix("scope=") else {
            continue;
        };
        let scope = scope
            .replace("%3A", ":")
            .replace("%3a", ":")
            .replace("%2C", ",")
            .replace("%2c", ",")
            .replace("%2F", "/")
            .replace("%2f", "/");
        let parts: Vec<&str> = scope.splitn(3, ':').collect();
        if let [kind, name, actions] = parts.as_slice() {
            access.push(serde_json::json!({
                "type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>(),
            }));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TOKEN_ISSUER, "sub": "husk", "aud": TOKEN_SERVICE,
        "exp": now + 600, "nbf": now - 60, "iat": now, "jti": format!("{now}-{}", std::process::id()),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let mut signer = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    signer
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(signing_input.as_bytes())?;
    let signature = signer.wait_with_output()?.stdout;
    let token = format!("{signing_input}.{}", b64(&signature));
    let body =
        serde_json::json!({"token": token, "access_token": token, "expires_in": 600}).to_string();
    respond(&mut stream, "200 OK", &body)
}
