//! Zero-downtime binary upgrade: the running process hands its listening sockets to a new one
//! over a Unix socket (`SCM_RIGHTS`), then stops accepting, drains and exits. Both processes
//! accept from the same kernel sockets during the overlap, so no queued connection is lost.
//!
//! Protocol on the upgrade socket (one connection per upgrade):
//! 1. new → old: connects;
//! 2. old → new: `TNUP1` + one flag byte (1 = TLS listener present, 2 = admin present) with
//!    the listener fds (http, then tls, then admin) as ancillary data;
//! 3. new → old: `OK` once it is serving on them;
//! 4. old: stops accepting, releases the upgrade socket, closes the stream, drains, exits;
//! 5. new: sees the stream close and binds the upgrade socket itself, for the next upgrade.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::TcpListener as StdTcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::server::{Listeners, StopMode, Stopper};

const MAGIC: &[u8; 5] = b"TNUP1";
const FLAG_TLS: u8 = 1;
const FLAG_ADMIN: u8 = 2;

/// The new process's side of a handover in progress.
pub struct Handover {
    stream: UnixStream,
    path: PathBuf,
}

/// Connects to the running instance's upgrade socket and receives its listeners.
pub fn take_over(path: &Path) -> io::Result<(Listeners, Handover)> {
    let stream = UnixStream::connect(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot reach the running instance at {}: {e}",
                path.display()
            ),
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut data = [0u8; 16];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        stream.as_fd(),
        &mut [IoSliceMut::new(&mut data)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut fds: Vec<OwnedFd> = Vec::new();
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(rights) = m {
            fds.extend(rights);
        }
    }
    if msg.bytes < 6 || &data[..5] != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected handover message from the running instance",
        ));
    }
    let flags = data[5];
    let expected = 1 + usize::from(flags & FLAG_TLS != 0) + usize::from(flags & FLAG_ADMIN != 0);
    if fds.len() != expected {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "expected {expected} listener sockets from the running instance, got {}",
                fds.len()
            ),
        ));
    }
    let mut fds = fds.into_iter();
    let mut next = || -> io::Result<StdTcpListener> {
        let fd = fds
            .next()
            .ok_or_else(|| io::Error::other("missing listener socket"))?;
        let l = StdTcpListener::from(fd);
        l.set_nonblocking(true)?;
        Ok(l)
    };
    let http = next()?;
    let tls = if flags & FLAG_TLS != 0 {
        Some(next()?)
    } else {
        None
    };
    let admin = if flags & FLAG_ADMIN != 0 {
        Some(next()?)
    } else {
        None
    };
    Ok((
        Listeners { http, tls, admin },
        Handover {
            stream,
            path: path.to_path_buf(),
        },
    ))
}

impl Handover {
    /// Tells the old process that the new one is serving, waits for it to let go of the
    /// upgrade socket, and returns the path to bind for the next upgrade.
    pub fn confirm(mut self) -> io::Result<PathBuf> {
        self.stream.write_all(b"OK")?;
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut rest = Vec::new();
        // The old process closes the stream after releasing the socket.
        let _ = self.stream.read_to_end(&mut rest);
        Ok(self.path)
    }
}

/// Dup'ed copies of the listeners, kept to hand over later.
pub struct HandoverFds {
    http: OwnedFd,
    tls: Option<OwnedFd>,
    admin: Option<OwnedFd>,
}

impl HandoverFds {
    /// Duplicates the listeners' descriptors.
    pub fn from_listeners(l: &Listeners) -> io::Result<Self> {
        Ok(Self {
            http: l.http.as_fd().try_clone_to_owned()?,
            tls: l
                .tls
                .as_ref()
                .map(|t| t.as_fd().try_clone_to_owned())
                .transpose()?,
            admin: l
                .admin
                .as_ref()
                .map(|a| a.as_fd().try_clone_to_owned())
                .transpose()?,
        })
    }
}

/// Listens on the upgrade socket; on a successful handover, asks the gateway to stop
/// (handover mode) and returns. Also returns as soon as any stop begins, releasing the
/// duplicated listener descriptors: otherwise the kernel would keep the ports open (and queue
/// connections nobody serves) after the gateway closed its own listeners.
pub async fn serve_upgrades(path: PathBuf, fds: HandoverFds, stopper: Stopper) -> io::Result<()> {
    let mut stop = stopper.subscribe();
    if *stop.borrow() != StopMode::Run {
        return Ok(());
    }
    tokio::select! {
        r = accept_upgrades(&path, fds, &stopper) => r,
        _ = stop.wait_for(|m| *m != StopMode::Run) => {
            tracing::debug!("stopping: upgrade socket released");
            let _ = std::fs::remove_file(&path);
            Ok(())
        }
    }
}

async fn accept_upgrades(path: &Path, fds: HandoverFds, stopper: &Stopper) -> io::Result<()> {
    if path.exists() {
        // A stale socket from a previous run (or the one we took over from, already released).
        let _ = std::fs::remove_file(path);
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot bind upgrade socket {}: {e}", path.display()),
        )
    })?;
    tracing::info!(socket = %path.display(), "upgrade socket ready");
    let fds = std::sync::Arc::new(fds);
    loop {
        let (stream, _) = listener.accept().await?;
        let std_stream = stream.into_std()?;
        std_stream.set_nonblocking(false)?;
        let f = std::sync::Arc::clone(&fds);
        let result = tokio::task::spawn_blocking(move || hand_over(std_stream, &f))
            .await
            .map_err(io::Error::other)?;
        match result {
            Ok(stream) => {
                tracing::info!("a new process took over the listeners; draining");
                stopper.stop(StopMode::Handover);
                drop(listener);
                drop(stream);
                return Ok(());
            }
            Err(e) => {
                tracing::error!(error = %e, "upgrade handover failed; this process keeps serving")
            }
        }
    }
}

fn hand_over(mut stream: UnixStream, fds: &HandoverFds) -> io::Result<UnixStream> {
    let mut list = vec![fds.http.as_fd()];
    let mut flags = 0u8;
    if let Some(t) = &fds.tls {
        list.push(t.as_fd());
        flags |= FLAG_TLS;
    }
    if let Some(a) = &fds.admin {
        list.push(a.as_fd());
        flags |= FLAG_ADMIN;
    }
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    if !cmsg.push(SendAncillaryMessage::ScmRights(&list)) {
        return Err(io::Error::other("ancillary buffer too small"));
    }
    let mut header = [0u8; 6];
    header[..5].copy_from_slice(MAGIC);
    header[5] = flags;
    rustix::net::sendmsg(
        stream.as_fd(),
        &[IoSlice::new(&header)],
        &mut cmsg,
        SendFlags::empty(),
    )?;
    // Wait for the new process to confirm that it serves.
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut ok = [0u8; 2];
    stream.read_exact(&mut ok)?;
    if &ok != b"OK" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected confirmation",
        ));
    }
    Ok(stream)
}
