//! Why sockets disconnected, kept for the development-mode `socket_disconnected` events.
//!
//! Filled by the namespaces' disconnect handlers ([`crate::connect::disconnected`]), emptied by
//! the admin tracker every second; off (and empty) in production mode, bounded in development.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Reasons kept between two reads of the tracker; more are dropped (the UI then shows a
/// generic reason).
pub const MAX_KEPT: usize = 10_000;

/// Recent disconnect reasons: `(namespace, socket id, reason)`.
#[derive(Debug, Default)]
pub struct DisconnectLog {
    enabled: AtomicBool,
    entries: Mutex<Vec<(String, String, &'static str)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl DisconnectLog {
    /// Starts keeping reasons (development mode).
    pub fn enable(&self) {
        self.enabled.store(true, Ordering::Relaxed);
    }

    /// Notes why socket `sid` of `ns` disconnected (a no-op unless enabled).
    pub fn record(&self, ns: &str, sid: socketioxide::socket::Sid, reason: &'static str) {
        if !self.enabled.load(Ordering::Relaxed) {
            return;
        }
        let mut entries = lock(&self.entries);
        if entries.len() < MAX_KEPT {
            entries.push((ns.to_owned(), sid.to_string(), reason));
        }
    }

    /// Takes every reason noted so far.
    pub fn take(&self) -> Vec<(String, String, &'static str)> {
        std::mem::take(&mut *lock(&self.entries))
    }
}
