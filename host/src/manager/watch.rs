//! The manager's background thread: auto-scan (file events, with polling as a fallback) and
//! periodic health checks.
//!
//! File events only wake the thread; it then waits for the directory to be quiet for
//! [`SETTLE`] (a copy in progress sends many events) and scans. A library caught half written
//! is refused (its headers say it is truncated) and picked up again at its next change.

use std::path::PathBuf;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use notify::{RecursiveMode, Watcher};

use super::Inner;
use crate::Error;

/// How long the directories must be quiet after a file event before a scan.
const SETTLE: Duration = Duration::from_millis(50);

enum Message {
    Changed,
    Stop,
}

/// The running background thread; [`Background::stop`] ends it.
pub(crate) struct Background {
    sender: mpsc::Sender<Message>,
    thread: Option<JoinHandle<()>>,
    // Kept alive for as long as the thread runs: dropping it stops the events.
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Background {
    pub(crate) fn spawn(inner: &Arc<Inner>) -> Result<Background, Error> {
        let (sender, receiver) = mpsc::channel();
        let watcher = if inner.config.auto_scan() {
            let events = sender.clone();
            let mut watcher = notify::recommended_watcher(
                move |event: notify::Result<notify::Event>| match event {
                    Ok(event) if event.kind.is_access() => {}
                    Ok(_) => {
                        let _ = events.send(Message::Changed);
                    }
                    Err(err) => tracing::warn!(error = %err, "file watcher error"),
                },
            )
            .map_err(|source| Error::Watch { error: Box::new(source) })?;
            for dir in inner.config.paths() {
                watcher.watch(dir, RecursiveMode::NonRecursive).map_err(|source| {
                    Error::Watch { error: Box::new(source) }.with_path(dir.to_owned())
                })?;
                tracing::info!(dir = %dir.display(), "watching");
            }
            Some(watcher)
        } else {
            None
        };
        let weak = Arc::downgrade(inner);
        let thread = thread::Builder::new()
            .name("calcplug-manager".to_owned())
            .spawn(move || run(weak, receiver))
            .map_err(|source| {
                Error::Io { error: source }.with_path(PathBuf::from("<manager thread>"))
            })?;
        Ok(Background { sender, thread: Some(thread), _watcher: watcher })
    }

    /// Ends the thread and waits for it (a scan in progress finishes first).
    pub(crate) fn stop(mut self) {
        let _ = self.sender.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(inner: Weak<Inner>, receiver: mpsc::Receiver<Message>) {
    let (scan_every, health_every) = match inner.upgrade() {
        Some(inner) => (
            inner.config.auto_scan().then(|| inner.config.scan_interval()),
            inner.config.health_interval(),
        ),
        None => return,
    };
    let far = Duration::from_secs(3600);
    let mut next_scan = scan_every.map(|every| Instant::now() + every);
    let mut next_health = health_every.map(|every| Instant::now() + every);
    loop {
        let now = Instant::now();
        let wake = [next_scan, next_health].into_iter().flatten().min().unwrap_or(now + far);
        let mut scan_now = false;
        match receiver.recv_timeout(wake.saturating_duration_since(now)) {
            Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            Ok(Message::Changed) => {
                // Let a burst of events (a copy in progress) settle.
                loop {
                    match receiver.recv_timeout(SETTLE) {
                        Ok(Message::Changed) => continue,
                        Ok(Message::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                        Err(RecvTimeoutError::Timeout) => break,
                    }
                }
                scan_now = true;
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        let Some(inner) = inner.upgrade() else { return };
        let now = Instant::now();
        if let (Some(at), Some(every)) = (next_scan, scan_every) {
            if scan_now || now >= at {
                let report = inner.scan();
                for name in &report.loaded {
                    tracing::info!(plugin = %name, "loaded");
                }
                for name in &report.reloaded {
                    tracing::info!(plugin = %name, "reloaded");
                }
                for err in &report.failed {
                    tracing::warn!(error = %err, "scan");
                }
                next_scan = Some(Instant::now() + every);
            }
        }
        if let (Some(at), Some(every)) = (next_health, health_every) {
            if now >= at {
                let slots: Vec<_> = inner.registry.load().values().cloned().collect();
                for slot in slots {
                    let health = slot.health();
                    match &health.problem {
                        Some(problem) => {
                            tracing::warn!(plugin = %health.name, %problem, "unhealthy")
                        }
                        None => tracing::debug!(plugin = %health.name, "healthy"),
                    }
                }
                next_health = Some(Instant::now() + every);
            }
        }
    }
}
