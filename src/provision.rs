//! Redis provisioning, in one place for the tests, the chaos runner and `run`: a container
//! (testcontainers, image built locally since nothing can be pulled) or a `redis-server`
//! process on a free loopback port with its own directory. Chosen by `EXPIRY_STREAM_REDIS`
//! (`container`, `process`, `auto` (default), or a `redis://` URL), and it says which it used.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The image the container backend runs (built by `scripts/build-redis-image.sh`).
pub const IMAGE: &str = "expiry-stream/redis";
pub const TAG: &str = "local";
const BUILD_SCRIPT: &str = include_str!("../scripts/build-redis-image.sh");

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("{0}")]
    Unavailable(String),
    #[error("EXPIRY_STREAM_REDIS={0:?} is not one of container, process, auto, or a redis:// URL")]
    BadChoice(String),
}

/// Which backend to use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Choice {
    Auto,
    Container,
    Process,
    Url(String),
}

impl Choice {
    pub fn parse(s: &str) -> Result<Choice, ProvisionError> {
        match s.trim() {
            "" | "auto" => Ok(Choice::Auto),
            "container" => Ok(Choice::Container),
            "process" => Ok(Choice::Process),
            u if u.starts_with("redis://") || u.starts_with("rediss://") || u.starts_with("unix://") => {
                Ok(Choice::Url(u.to_string()))
            }
            other => Err(ProvisionError::BadChoice(other.to_string())),
        }
    }
    /// From `EXPIRY_STREAM_REDIS`, defaulting to `auto`.
    pub fn from_env() -> Result<Choice, ProvisionError> {
        Choice::parse(&std::env::var("EXPIRY_STREAM_REDIS").unwrap_or_default())
    }
}

enum Guard {
    #[cfg(feature = "containers")]
    // Boxed: the container handle is large, and the guard lives in every RedisServer.
    Container(Option<Box<testcontainers::ContainerAsync<testcontainers::GenericImage>>>),
    Process {
        child: std::process::Child,
        dir: PathBuf,
    },
    External,
}

/// A running Redis owned by this handle: stopped and cleaned up on drop.
pub struct RedisServer {
    pub url: String,
    /// "container <id>", "process <pid>" or "external".
    pub backend: String,
    /// `container`, `process` or `external`.
    pub kind: &'static str,
    /// Which of [`SERVERS`] runs (None: the `redis-server` on PATH).
    pub server: Option<String>,
    guard: Guard,
}

/// Extra server arguments every provisioned Redis gets: no RDB snapshots (tests own their
/// data), `DEBUG` allowed from loopback for fault injection (servers before Redis 7.0 have
/// no such setting and allow `DEBUG` anyway: see [`base_args`]).
pub const BASE_ARGS: &[&str] = &["--save", "", "--appendonly", "no", "--enable-debug-command", "local"];

/// The servers of the compatibility matrix (docs/COMPAT.md), fetched by
/// `scripts/get-servers.sh` into `.servers/<name>/server`.
pub const SERVERS: &[&str] = &["redis-6.2", "redis-7.0", "redis-8.2", "valkey-8.1", "valkey-9.1"];

/// The server `EXPIRY_STREAM_SERVER` names (one of [`SERVERS`]); None when unset, which means
/// the `redis-server` on PATH.
pub fn server_choice() -> Result<Option<String>, ProvisionError> {
    match std::env::var("EXPIRY_STREAM_SERVER").unwrap_or_default().trim() {
        "" => Ok(None),
        s if SERVERS.contains(&s) => Ok(Some(s.to_string())),
        other => Err(ProvisionError::Unavailable(format!(
            "EXPIRY_STREAM_SERVER={other:?} is not one of {}",
            SERVERS.join(", ")
        ))),
    }
}

/// Where `scripts/get-servers.sh` puts the servers: `EXPIRY_STREAM_SERVERS_DIR`, else
/// `.servers` in the source tree.
fn servers_dir() -> PathBuf {
    std::env::var_os("EXPIRY_STREAM_SERVERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".servers"))
}

/// The server binary to run: `server` (one of [`SERVERS`]), or `redis-server` on PATH.
pub fn server_binary(server: Option<&str>) -> Result<PathBuf, ProvisionError> {
    match server {
        None => redis_server_path().ok_or_else(|| ProvisionError::Unavailable("redis-server not found on PATH".into())),
        Some(name) => {
            let bin = servers_dir().join(name).join("server");
            if bin.is_file() {
                Ok(bin)
            } else {
                Err(ProvisionError::Unavailable(format!(
                    "{name} is not installed ({} missing): run scripts/get-servers.sh {name}",
                    bin.display()
                )))
            }
        }
    }
}

/// [`BASE_ARGS`] as `server` takes them: Redis 6.2 refuses `enable-debug-command` (it came
/// in 7.0), so it starts without.
pub fn base_args(server: Option<&str>) -> Vec<&'static str> {
    let old = server == Some("redis-6.2");
    BASE_ARGS.iter().copied().take(if old { 4 } else { BASE_ARGS.len() }).collect()
}

/// The container image of `server`: `expiry-stream/redis:local` for the one on PATH,
/// `expiry-stream/redis:<name>` for the others.
pub fn image_tag(server: Option<&str>) -> String {
    server.unwrap_or(TAG).to_string()
}

impl RedisServer {
    /// Provisions by `choice`, running the server `EXPIRY_STREAM_SERVER` names. `Auto` tries
    /// a container, then a process, and says why it fell back.
    pub async fn start(choice: Choice, extra: &[String]) -> Result<RedisServer, ProvisionError> {
        RedisServer::start_server(choice, server_choice()?.as_deref(), extra).await
    }

    /// [`RedisServer::start`] with the server named here (one of [`SERVERS`]; None: the
    /// `redis-server` on PATH) whatever the environment says.
    pub async fn start_server(
        choice: Choice,
        server: Option<&str>,
        extra: &[String],
    ) -> Result<RedisServer, ProvisionError> {
        match choice {
            Choice::Url(u) => Ok(RedisServer {
                url: u,
                backend: "external".into(),
                kind: "external",
                server: None,
                guard: Guard::External,
            }),
            Choice::Process => start_process(server, extra).await,
            Choice::Container => start_container(server, extra).await,
            Choice::Auto => match start_container(server, extra).await {
                Ok(s) => Ok(s),
                Err(ce) => match start_process(server, extra).await {
                    Ok(s) => {
                        eprintln!("redis: container backend unavailable ({ce}); using a redis-server process");
                        Ok(s)
                    }
                    Err(pe) => Err(ProvisionError::Unavailable(format!(
                        "no Redis could be provisioned.\n  container: {ce}\n  process: {pe}\n\
                         Install one of: Docker (and redis-server, to build the local image), or \
                         redis-server (Debian/Ubuntu: apt-get install redis-server), or pass \
                         --redis-url redis://HOST:PORT"
                    ))),
                },
            },
        }
    }

    /// Stops and removes the server now (drop does the same, best effort).
    #[cfg_attr(not(feature = "containers"), allow(unused_mut))]
    pub async fn stop(mut self) {
        #[cfg(feature = "containers")]
        if let Guard::Container(c) = &mut self.guard {
            if let Some(c) = c.take() {
                let _ = c.rm().await;
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Guard::Process { child, dir } = &mut self.guard {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

async fn wait_ready(url: &str, deadline: Duration) -> Result<(), String> {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < deadline {
        match crate::store::server::ping(url).await {
            Ok(()) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("redis at {url} not ready after {deadline:?}: {last}"))
}

/// Finds `redis-server` on PATH or in the usual places.
pub fn redis_server_path() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/local/bin", "/usr/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join("redis-server")).find(|p| p.is_file())
}

async fn start_process(server: Option<&str>, extra: &[String]) -> Result<RedisServer, ProvisionError> {
    let bin = server_binary(server)?;
    let port = free_port().map_err(|e| ProvisionError::Unavailable(format!("no free port: {e}")))?;
    let dir = std::env::temp_dir().join(format!("expiry-stream-redis-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| ProvisionError::Unavailable(format!("{}: {e}", dir.display())))?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("--port").arg(port.to_string()).arg("--bind").arg("127.0.0.1").arg("--dir").arg(&dir);
    cmd.args(base_args(server)).args(extra);
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null());
    let child = cmd.spawn().map_err(|e| ProvisionError::Unavailable(format!("{}: {e}", bin.display())))?;
    let url = format!("redis://127.0.0.1:{port}/");
    let pid = child.id();
    let server = RedisServer {
        url,
        backend: format!("process {pid} ({})", bin.display()),
        kind: "process",
        server: server.map(String::from),
        guard: Guard::Process { child, dir },
    };
    wait_ready(&server.url, Duration::from_secs(10)).await.map_err(ProvisionError::Unavailable)?;
    Ok(server)
}

/// Builds the chosen server's local image when missing (no registry here: nothing can be
/// pulled), from the same binary the process backend runs.
pub fn ensure_image(server: Option<&str>) -> Result<(), String> {
    let tag = image_tag(server);
    let present = std::process::Command::new("docker")
        .args(["image", "inspect", &format!("{IMAGE}:{tag}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("docker CLI: {e}"))?;
    if present.success() {
        return Ok(());
    }
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(BUILD_SCRIPT)
        .arg("build-redis-image")
        .arg(format!("{IMAGE}:{tag}"))
        .arg(server_binary(server).map_err(|e| e.to_string())?)
        .output()
        .map_err(|e| format!("bash: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("building image {IMAGE}:{tag} failed: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

#[cfg(feature = "containers")]
async fn start_container(server: Option<&str>, extra: &[String]) -> Result<RedisServer, ProvisionError> {
    use testcontainers::core::{ContainerPort, WaitFor};
    use testcontainers::runners::AsyncRunner;
    use testcontainers::{GenericImage, ImageExt};
    let owned = server.map(String::from);
    let img = tokio::task::spawn_blocking(move || ensure_image(owned.as_deref()))
        .await
        .map_err(|e| ProvisionError::Unavailable(e.to_string()))?;
    img.map_err(ProvisionError::Unavailable)?;
    let mut args: Vec<String> =
        ["--bind", "0.0.0.0", "--protected-mode", "no", "--dir", "/data"].map(String::from).to_vec();
    args.extend(base_args(server).iter().map(|s| s.to_string()));
    args.extend(extra.iter().cloned());
    let tag = image_tag(server);
    let c = GenericImage::new(IMAGE, &tag)
        .with_exposed_port(ContainerPort::Tcp(6379))
        .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"))
        .with_cmd(args)
        .with_startup_timeout(Duration::from_secs(30))
        .start()
        .await
        .map_err(|e| ProvisionError::Unavailable(format!("container: {e}")))?;
    let port = c.get_host_port_ipv4(6379).await.map_err(|e| ProvisionError::Unavailable(e.to_string()))?;
    let url = format!("redis://127.0.0.1:{port}/");
    let id = c.id().chars().take(12).collect::<String>();
    wait_ready(&url, Duration::from_secs(10)).await.map_err(ProvisionError::Unavailable)?;
    Ok(RedisServer {
        url,
        backend: format!("container {id} ({IMAGE}:{tag})"),
        kind: "container",
        server: server.map(String::from),
        guard: Guard::Container(Some(Box::new(c))),
    })
}

#[cfg(not(feature = "containers"))]
async fn start_container(_server: Option<&str>, _extra: &[String]) -> Result<RedisServer, ProvisionError> {
    Err(ProvisionError::Unavailable("built without the `containers` feature".into()))
}

// ---- Chaos support, used by `scenario`: the server's own process or container, and a crash
// followed by a restart with the same port (process), container, directory and arguments.

impl RedisServer {
    /// The `redis-server` pid (process backend only).
    pub fn pid(&self) -> Option<u32> {
        match &self.guard {
            Guard::Process { child, .. } => Some(child.id()),
            _ => None,
        }
    }

    /// The container id (container backend only).
    pub fn container_id(&self) -> Option<String> {
        match &self.guard {
            #[cfg(feature = "containers")]
            Guard::Container(Some(c)) => Some(c.id().to_string()),
            _ => None,
        }
    }

    /// Crashes the server with SIGKILL (no shutdown, so no final AOF flush or fsync), waits
    /// `down_for`, and starts it again on the same data directory with the same arguments
    /// (`extra` must be those it was started with). A process keeps its port; a container gets
    /// a new host port, so the new URL is returned (and stored in `self.url`).
    pub async fn crash_restart(&mut self, extra: &[String], down_for: Duration) -> Result<String, ProvisionError> {
        let unavailable = |e: String| ProvisionError::Unavailable(e);
        match &mut self.guard {
            Guard::Process { child, dir } => {
                let _ = child.kill();
                let _ = child.wait();
                tokio::time::sleep(down_for).await;
                let bin = server_binary(self.server.as_deref())?;
                let port = self
                    .url
                    .trim_end_matches('/')
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| unavailable(format!("no port in {}", self.url)))?;
                let mut cmd = std::process::Command::new(&bin);
                cmd.arg("--port").arg(port.to_string()).arg("--bind").arg("127.0.0.1").arg("--dir").arg(&*dir);
                cmd.args(base_args(self.server.as_deref())).args(extra);
                cmd.stdout(Stdio::null()).stderr(Stdio::null()).stdin(Stdio::null());
                *child = cmd.spawn().map_err(|e| unavailable(format!("{}: {e}", bin.display())))?;
                self.backend = format!("process {} ({})", child.id(), bin.display());
            }
            #[cfg(feature = "containers")]
            Guard::Container(Some(c)) => {
                let id = c.id().to_string();
                let docker = |args: &[&str]| -> Result<String, ProvisionError> {
                    let out = std::process::Command::new("docker")
                        .args(args)
                        .output()
                        .map_err(|e| ProvisionError::Unavailable(format!("docker CLI: {e}")))?;
                    if !out.status.success() {
                        return Err(ProvisionError::Unavailable(format!(
                            "docker {}: {}",
                            args.join(" "),
                            String::from_utf8_lossy(&out.stderr).trim()
                        )));
                    }
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                };
                docker(&["kill", "--signal", "KILL", &id])?;
                // `docker kill` returns before the container has stopped.
                let stopped = Instant::now();
                while docker(&["inspect", "--format", "{{.State.Running}}", &id])?.trim() == "true" {
                    if stopped.elapsed() > Duration::from_secs(10) {
                        return Err(unavailable(format!("container {id} still running after kill")));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                tokio::time::sleep(down_for).await;
                docker(&["start", &id])?;
                let ports = docker(&["port", &id, "6379/tcp"])?;
                let port = ports
                    .lines()
                    .filter_map(|l| l.rsplit(':').next())
                    .find_map(|p| p.trim().parse::<u16>().ok())
                    .ok_or_else(|| unavailable(format!("docker port {id}: {ports:?}")))?;
                self.url = format!("redis://127.0.0.1:{port}/");
            }
            _ => return Err(unavailable("only a provisioned Redis (process or container) can be restarted".into())),
        }
        wait_ready(&self.url, Duration::from_secs(30)).await.map_err(ProvisionError::Unavailable)?;
        Ok(self.url.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choice_parses_and_refuses() {
        assert_eq!(Choice::parse("").unwrap(), Choice::Auto);
        assert_eq!(Choice::parse("process").unwrap(), Choice::Process);
        assert_eq!(Choice::parse("redis://h:1/").unwrap(), Choice::Url("redis://h:1/".into()));
        let e = Choice::parse("docker").unwrap_err().to_string();
        assert!(e.contains("\"docker\" is not one of container, process, auto"), "{e}");
    }
}
