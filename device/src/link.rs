//! Transports: a real serial port, or a pseudo-terminal the simulator
//! creates. Both are `serialport` ports driven by the same loop.

use crate::platform::Platform;
use crate::server::Server;
use gaussedge_shared::head::Storage;
use serialport::{SerialPort, TTYPort};
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A pseudo-terminal pair: the simulator serves the controller side; the
/// path of the other side is what a host opens as its serial port.
pub struct Pty {
    pub controller: TTYPort,
    /// Kept open so the terminal does not hang up between host sessions.
    _peer: TTYPort,
    pub path: String,
}

impl Pty {
    pub fn open() -> anyhow::Result<Self> {
        let (controller, mut peer) = TTYPort::pair()?;
        let path = peer.name().ok_or_else(|| anyhow::anyhow!("pseudo-terminal has no name"))?;
        peer.set_exclusive(false)?;
        // Our copy of the peer only keeps the terminal alive: release its
        // advisory lock so a host can open the port exclusively.
        // SAFETY: flock on a file descriptor this TTYPort owns and keeps open.
        let r = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&peer), libc::LOCK_UN) };
        anyhow::ensure!(r == 0, "cannot unlock the pseudo-terminal: {}", std::io::Error::last_os_error());
        Ok(Pty { controller, _peer: peer, path })
    }
}

/// Opens a real serial port.
pub fn open_serial(path: &str, baud: u32) -> anyhow::Result<Box<dyn SerialPort>> {
    Ok(serialport::new(path, baud).timeout(Duration::from_millis(20)).open()?)
}

/// Serves requests until `stop` is set or the port fails.
pub fn serve<S: Storage, P: Platform>(
    port: &mut dyn SerialPort,
    server: &mut Server<'_, S, P>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    port.set_timeout(Duration::from_millis(20))?;
    let mut buf = [0u8; 4096];
    let mut write_error = None;
    while !stop.load(Ordering::Relaxed) {
        let n = match port.read(&mut buf) {
            Ok(0) => continue,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                continue
            }
            Err(e) => return Err(e.into()),
        };
        server.receive(&buf[..n], &mut |frame| {
            if let Err(e) = port.write_all(frame).and_then(|_| port.flush()) {
                write_error = Some(e);
            }
        });
        if let Some(e) = write_error.take() {
            return Err(e.into());
        }
    }
    Ok(())
}
