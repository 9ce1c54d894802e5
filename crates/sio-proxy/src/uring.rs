//! WebSocket tunnels on io_uring: after the upgrade, one ring thread owns the two sockets of
//! every tunnel and moves their bytes without tokio, epoll or a task wake-up per frame.
//!
//! Each direction of a tunnel has at most one operation in the ring: a `recv` that takes its
//! buffer from a shared buffer ring only when data arrives (so an idle tunnel holds no
//! buffer), then a `send` of what it read, then the `recv` again. The operations of every
//! tunnel that moved bytes are submitted together in one `io_uring_enter`, which also waits
//! for the next completions: a broadcast to 1,000 clients is a few system calls, not 3,000.
//!
//! - Backpressure: a direction reads again only once its last read is sent, so a slow client
//!   costs at most one buffer ([`BUFFER_SIZE`]) and the node's socket fills (the node sees it).
//! - Half-close: a read of 0 bytes shuts the other socket's write side; the tunnel ends when
//!   both directions did, or at the first error (as [`crate::tunnel::Pipe`]).
//! - Idle timeout: checked per tunnel once per period, as the epoll path does.
//! - A buffer shortage (every buffer in flight) parks the direction until a send returns one.
//!
//! The tokio side ([`Engine::splice`]) waits for one message per tunnel: its end. The ring
//! starts once, at start-up ([`configure`]), with `--tunnel-io uring` or `auto`; where the
//! kernel refuses io_uring (an old kernel, `io_uring_disabled`, a seccomp profile) `auto`
//! keeps the epoll [`crate::tunnel::Pipe`], which is also the default: measured on loopback
//! with 1,000 clients at 10 room messages/s, the ring cut the proxy's system calls per frame
//! from ~2.2 to ~0.05 but not its CPU per frame (the kernel's TCP work dominates both).
//!
//! The only module of the workspace with `unsafe`: the kernel reads and writes the buffers
//! and the buffer ring while operations are in flight, which the borrow checker cannot see.
//! Every block says why it is sound; all of that memory is owned by [`Ring`] and outlives its
//! `IoUring`.

#![allow(unsafe_code)]

use std::io::{self, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use io_uring::types::{BufRingEntry, Fd, Timespec};
use io_uring::{IoUring, cqueue, opcode, squeue};
use tokio::sync::oneshot;

/// Submission queue size; more operations than this in one round are submitted in batches.
const RING_ENTRIES: u32 = 4096;
/// Size of each provided buffer: the most one read takes.
pub const BUFFER_SIZE: usize = 16 * 1024;
/// Buffers shared by every tunnel (a power of two). Touched pages stay resident, so the ring
/// costs at most this many pages once traffic has rotated through all of them.
#[cfg(not(test))]
const BUFFER_COUNT: u16 = 1024;
/// Few in tests, so that buffer shortages happen.
#[cfg(test)]
const BUFFER_COUNT: u16 = 8;
/// The buffer group of the ring.
const BUFFER_GROUP: u16 = 7;
/// The longest wait of the ring thread between idle checks.
const MAX_TICK: Duration = Duration::from_secs(1);
/// The shortest one (tests use short idle periods).
const MIN_TICK: Duration = Duration::from_millis(10);

/// How tunnels move their bytes: `--tunnel-io`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TunnelIo {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring; start-up fails when the kernel refuses it.
    Uring,
    /// tokio's epoll reactor (one task per tunnel).
    Epoll,
}

static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();

/// Chooses the tunnel path once per process (later calls keep the first choice). With
/// `Uring`, a kernel that refuses io_uring is an error; with `Auto` it is logged.
pub fn configure(mode: TunnelIo) -> io::Result<()> {
    let mut failure = None;
    let engine = ENGINE.get_or_init(|| match mode {
        TunnelIo::Epoll => None,
        TunnelIo::Auto | TunnelIo::Uring => match Engine::start() {
            Ok(engine) => Some(engine),
            Err(e) => {
                failure = Some(e);
                None
            }
        },
    });
    match (failure, mode) {
        (Some(e), TunnelIo::Uring) => Err(e),
        (Some(e), _) => {
            tracing::warn!(error = %e, "io_uring unavailable: tunnels use epoll");
            Ok(())
        }
        (None, _) => {
            tracing::info!(
                path = if engine.is_some() {
                    "io_uring"
                } else {
                    "epoll"
                },
                "tunnel i/o"
            );
            Ok(())
        }
    }
}

/// The io_uring engine, when [`configure`] started one (none when it was never called).
pub fn engine() -> Option<&'static Engine> {
    ENGINE
        .get()
        .and_then(Option::as_ref)
        .filter(|e| e.shared.alive.load(Ordering::Relaxed))
}

/// A duplicate of a client connection's descriptor, for [`Engine::splice`] (the original
/// closes with its pingora stream, which deregisters it from tokio first).
pub fn dup_client(stream: &pingora::protocols::l4::stream::Stream) -> io::Result<OwnedFd> {
    // SAFETY: the descriptor belongs to `stream`, which is alive for the whole borrow.
    unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) }.try_clone_to_owned()
}

/// A tunnel handed to the ring.
struct NewTunnel {
    client: TcpStream,
    node: TcpStream,
    idle: Duration,
    done: oneshot::Sender<io::Result<()>>,
}

/// What the tokio side and the ring thread share.
struct Shared {
    queue: Mutex<Vec<NewTunnel>>,
    /// A wake-up byte is on its way (saves a write per tunnel during a connection burst).
    notified: AtomicBool,
    /// Cleared if the ring fails: new tunnels then take the epoll path.
    alive: AtomicBool,
}

/// The handle to the ring thread.
pub struct Engine {
    shared: Arc<Shared>,
    waker: UnixStream,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// Sets up the ring (failing when the kernel lacks what it needs) and starts its thread.
    pub fn start() -> io::Result<Self> {
        let (waker, wake_rx) = UnixStream::pair()?;
        waker.set_nonblocking(true)?;
        let shared = Arc::new(Shared {
            queue: Mutex::new(Vec::new()),
            notified: AtomicBool::new(false),
            alive: AtomicBool::new(true),
        });
        let thread_shared = shared.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("sio-tunnel-ring".into())
            .spawn(move || {
                // Made on its own thread: a single-issuer ring belongs to the thread that
                // created it.
                let mut ring = match Ring::new() {
                    Ok(ring) => {
                        let _ = ready_tx.send(Ok(()));
                        ring
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                if let Err(e) = ring.run(&thread_shared, &wake_rx) {
                    tracing::error!(error = %e, "tunnel ring failed; new tunnels use epoll");
                }
                thread_shared.alive.store(false, Ordering::Relaxed);
                // Its tunnels end with it: their sockets close and their owners hear of it.
            })?;
        ready_rx
            .recv()
            .map_err(|_| io::Error::other("the ring thread died at start"))??;
        Ok(Engine { shared, waker })
    }

    /// Moves bytes between `client` and `node` (blocking sockets or not) on the ring until the
    /// tunnel ends; the receiver says how (an error when the ring itself went away).
    pub fn splice(
        &self,
        client: OwnedFd,
        node: OwnedFd,
        idle: Duration,
    ) -> io::Result<oneshot::Receiver<io::Result<()>>> {
        let client = TcpStream::from(client);
        let node = TcpStream::from(node);
        // Blocking file mode: io_uring then waits for readiness itself instead of failing
        // with EAGAIN.
        client.set_nonblocking(false)?;
        node.set_nonblocking(false)?;
        let (done, ended) = oneshot::channel();
        self.shared
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(NewTunnel {
                client,
                node,
                idle,
                done,
            });
        if !self.shared.notified.swap(true, Ordering::AcqRel) {
            match (&self.waker).write(&[1]) {
                Ok(_) => {}
                // The pipe is full of wake-ups the ring has yet to read: it will look.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ended)
    }
}

/// Operation kinds in the low byte of a `user_data`; the tunnel's slot is above.
const RECV: u64 = 0; // + direction
const SEND: u64 = 2; // + direction
const CANCEL: u64 = 4;
const WAKE: u64 = u64::MAX;
const TICK: u64 = u64::MAX - 1;

fn user_data(slot: usize, kind: u64) -> u64 {
    ((slot as u64) << 8) | kind
}

/// One direction: reads `fds[d]`, writes `fds[1 - d]` (0: client to node, 1: node to client).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    /// A `recv` is in the ring.
    Reading,
    /// Every buffer was in flight: waits for one to come back.
    NoBuffer,
    /// A `send` of `buffer[start..end]` is in the ring.
    Sending { bid: u16, start: u32, end: u32 },
    /// The reader ended and the writer is shut down.
    Done,
}

struct Tunnel {
    /// 0: the client, 1: the node.
    fds: [TcpStream; 2],
    flows: [Flow; 2],
    /// Operations of this tunnel in the ring; its slot is freed only at 0.
    in_flight: u32,
    /// A byte moved since the last idle check.
    active: bool,
    idle: Duration,
    next_check: Instant,
    /// Set when the tunnel is ending: its result, sent once nothing is in flight.
    ending: Option<io::Result<()>>,
    done: Option<oneshot::Sender<io::Result<()>>>,
}

/// The provided buffers and the ring the kernel takes them from.
struct Buffers {
    entries: *mut BufRingEntry,
    entries_layout: std::alloc::Layout,
    data: Box<[u8]>,
    tail: u16,
}

// The raw pointer is only used by the ring thread that owns the `Buffers`.
unsafe impl Send for Buffers {}

impl Buffers {
    fn new() -> io::Result<Self> {
        let entries_layout = std::alloc::Layout::from_size_align(
            usize::from(BUFFER_COUNT) * std::mem::size_of::<BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(entries_layout) }.cast::<BufRingEntry>();
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        // Zeroed memory is only made resident where a read lands.
        let data = vec![0u8; usize::from(BUFFER_COUNT) * BUFFER_SIZE].into_boxed_slice();
        let mut buffers = Buffers {
            entries,
            entries_layout,
            data,
            tail: 0,
        };
        for bid in 0..BUFFER_COUNT {
            buffers.give_back(bid);
        }
        buffers.publish();
        Ok(buffers)
    }

    fn addr(&self, bid: u16) -> *const u8 {
        self.data[usize::from(bid) * BUFFER_SIZE..].as_ptr()
    }

    /// Queues buffer `bid` for the kernel (visible at the next [`Self::publish`]).
    fn give_back(&mut self, bid: u16) {
        let index = usize::from(self.tail & (BUFFER_COUNT - 1));
        // SAFETY: `index` < BUFFER_COUNT, inside the allocation; the kernel only reads
        // entries between its head and the published tail, and this one is past the tail.
        let entry = unsafe { &mut *self.entries.add(index) };
        entry.set_addr(self.addr(bid) as u64);
        entry.set_len(BUFFER_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes the buffers given back visible to the kernel.
    fn publish(&self) {
        // SAFETY: the tail field of the first entry, aligned for a u16, shared with the
        // kernel only through atomic accesses.
        let tail = unsafe { AtomicU16::from_ptr(BufRingEntry::tail(self.entries).cast_mut()) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; the ring that used it is gone (the
        // `Ring` drops its `IoUring` first).
        unsafe { std::alloc::dealloc(self.entries.cast(), self.entries_layout) }
    }
}

/// The ring thread's state.
struct Ring {
    ring: IoUring,
    // Declared after `ring` so that the kernel lets go of them first.
    buffers: Buffers,
    tunnels: Vec<Option<Tunnel>>,
    free_slots: Vec<usize>,
    /// Directions waiting for a buffer.
    starved: Vec<(usize, usize)>,
    /// Operations to submit at the next `io_uring_enter`.
    queued: Vec<squeue::Entry>,
    wake_buf: Box<[u8; 64]>,
    tick: Duration,
    tick_spec: Box<Timespec>,
}

impl Ring {
    fn new() -> io::Result<Self> {
        // Completions run only when this thread asks for them (no task-work interrupts of
        // its own, one wake-up per wait) where the kernel can (6.1+).
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::builder().build(RING_ENTRIES))?;
        if !ring.params().is_feature_fast_poll() {
            return Err(io::Error::other(
                "io_uring without IORING_FEAT_FAST_POLL (kernel < 5.7)",
            ));
        }
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        for (code, name) in [
            (opcode::Recv::CODE, "recv"),
            (opcode::Send::CODE, "send"),
            (opcode::AsyncCancel::CODE, "async cancel"),
            (opcode::Timeout::CODE, "timeout"),
        ] {
            if !probe.is_supported(code) {
                return Err(io::Error::other(format!("io_uring lacks {name}")));
            }
        }
        let buffers = Buffers::new()?;
        // SAFETY: the entries live as long as the ring (same struct, dropped after it).
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                buffers.entries as u64,
                BUFFER_COUNT,
                BUFFER_GROUP,
                0,
            )?;
        }
        Ok(Ring {
            ring,
            buffers,
            tunnels: Vec::new(),
            free_slots: Vec::new(),
            starved: Vec::new(),
            queued: Vec::new(),
            wake_buf: Box::new([0; 64]),
            tick: MAX_TICK,
            tick_spec: Box::new(Timespec::new()),
        })
    }

    fn run(&mut self, shared: &Shared, wake_rx: &UnixStream) -> io::Result<()> {
        let wake_fd = Fd(wake_rx.as_raw_fd());
        self.queue_wake(wake_fd);
        self.queue_tick();
        let mut completions: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            self.submit_queued()?;
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(code) if code == EINTR || code == EBUSY) =>
                    {}
                Err(e) => return Err(e),
            }
            completions.clear();
            completions.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            let mut returned = false;
            for &(data, result, flags) in &completions {
                match data {
                    WAKE => {
                        if result < 0 && result != -EINTR {
                            return Err(io::Error::from_raw_os_error(-result));
                        }
                        if result == 0 {
                            // The engine was dropped (only tests drop theirs): stop, which
                            // closes the tunnels left.
                            return Ok(());
                        }
                        shared.notified.store(false, Ordering::Release);
                        let new = std::mem::take(
                            &mut *shared.queue.lock().unwrap_or_else(|p| p.into_inner()),
                        );
                        for tunnel in new {
                            self.add(tunnel);
                        }
                        self.queue_wake(wake_fd);
                    }
                    TICK => {
                        self.check_idle();
                        self.queue_tick();
                    }
                    _ => {
                        let slot = (data >> 8) as usize;
                        let kind = data & 0xff;
                        if kind == CANCEL {
                            continue;
                        }
                        let direction = (kind & 1) as usize;
                        if kind >= SEND {
                            returned |= self.on_send(slot, direction, result);
                        } else {
                            returned |= self.on_recv(slot, direction, result, flags);
                        }
                    }
                }
            }
            if returned {
                self.buffers.publish();
                for (slot, direction) in std::mem::take(&mut self.starved) {
                    if let Some(t) = self.tunnels[slot].as_mut()
                        && t.ending.is_none()
                        && t.flows[direction] == Flow::NoBuffer
                    {
                        self.queue_recv(slot, direction);
                    }
                }
            }
        }
    }

    fn add(&mut self, new: NewTunnel) {
        let slot = self.free_slots.pop().unwrap_or_else(|| {
            self.tunnels.push(None);
            self.tunnels.len() - 1
        });
        self.tick = self.tick.min((new.idle / 4).max(MIN_TICK));
        self.tunnels[slot] = Some(Tunnel {
            fds: [new.client, new.node],
            flows: [Flow::Reading; 2],
            in_flight: 0,
            active: false,
            idle: new.idle,
            next_check: Instant::now() + new.idle,
            ending: None,
            done: Some(new.done),
        });
        self.queue_recv(slot, 0);
        self.queue_recv(slot, 1);
    }

    fn queue_wake(&mut self, fd: Fd) {
        let entry = opcode::Recv::new(fd, self.wake_buf.as_mut_ptr(), 64)
            .build()
            .user_data(WAKE);
        self.queued.push(entry);
    }

    fn queue_tick(&mut self) {
        *self.tick_spec = Timespec::new()
            .sec(self.tick.as_secs())
            .nsec(self.tick.subsec_nanos());
        let entry = opcode::Timeout::new(&*self.tick_spec as *const Timespec)
            .build()
            .user_data(TICK);
        self.queued.push(entry);
    }

    fn queue_recv(&mut self, slot: usize, direction: usize) {
        let Some(t) = self.tunnels[slot].as_mut() else {
            return;
        };
        t.flows[direction] = Flow::Reading;
        t.in_flight += 1;
        let fd = Fd(t.fds[direction].as_raw_fd());
        let entry = opcode::Recv::new(fd, std::ptr::null_mut(), BUFFER_SIZE as u32)
            .buf_group(BUFFER_GROUP)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
            .user_data(user_data(slot, RECV + direction as u64));
        self.queued.push(entry);
    }

    fn queue_send(&mut self, slot: usize, direction: usize, bid: u16, start: u32, end: u32) {
        let Some(t) = self.tunnels[slot].as_mut() else {
            return;
        };
        t.flows[direction] = Flow::Sending { bid, start, end };
        t.in_flight += 1;
        let fd = Fd(t.fds[1 - direction].as_raw_fd());
        // SAFETY: `start..end` lies inside buffer `bid` (end <= BUFFER_SIZE).
        let buf = unsafe { self.buffers.addr(bid).add(start as usize) };
        let entry = opcode::Send::new(fd, buf, end - start)
            .flags(MSG_NOSIGNAL | MSG_WAITALL)
            .build()
            .user_data(user_data(slot, SEND + direction as u64));
        self.queued.push(entry);
    }

    /// A `recv` completed; true when a buffer went back to the kernel.
    fn on_recv(&mut self, slot: usize, direction: usize, result: i32, flags: u32) -> bool {
        let bid = cqueue::buffer_select(flags);
        let Some(t) = self.tunnels[slot].as_mut() else {
            return bid.map(|b| self.buffers.give_back(b)).is_some();
        };
        t.in_flight -= 1;
        if t.ending.is_some() {
            self.finish_if_quiet(slot);
            return bid.map(|b| self.buffers.give_back(b)).is_some();
        }
        match (result, bid) {
            (n, Some(bid)) if n > 0 => {
                t.active = true;
                self.queue_send(slot, direction, bid, 0, n as u32);
                false
            }
            (0, _) => {
                // End of this direction: pass the half-close on.
                let shut = t.fds[1 - direction].shutdown(Shutdown::Write);
                t.flows[direction] = Flow::Done;
                match shut {
                    Err(e) if e.kind() != io::ErrorKind::NotConnected => self.end(slot, Err(e)),
                    _ if t.flows == [Flow::Done; 2] => self.end(slot, Ok(())),
                    _ => {}
                }
                bid.map(|b| self.buffers.give_back(b)).is_some()
            }
            (n, _) if n == -ENOBUFS => {
                t.flows[direction] = Flow::NoBuffer;
                self.starved.push((slot, direction));
                false
            }
            (n, _) if n == -EINTR || n == -EAGAIN => {
                self.queue_recv(slot, direction);
                bid.map(|b| self.buffers.give_back(b)).is_some()
            }
            (n, _) => {
                let error = if n < 0 {
                    io::Error::from_raw_os_error(-n)
                } else {
                    io::Error::other("recv without a buffer")
                };
                self.end(slot, Err(error));
                bid.map(|b| self.buffers.give_back(b)).is_some()
            }
        }
    }

    /// A `send` completed; true when a buffer went back to the kernel.
    fn on_send(&mut self, slot: usize, direction: usize, result: i32) -> bool {
        let Some(t) = self.tunnels[slot].as_mut() else {
            return false;
        };
        t.in_flight -= 1;
        let Flow::Sending { bid, start, end } = t.flows[direction] else {
            return false;
        };
        if t.ending.is_some() {
            self.buffers.give_back(bid);
            self.finish_if_quiet(slot);
            return true;
        }
        match result {
            n if n > 0 && start + (n as u32) < end => {
                self.queue_send(slot, direction, bid, start + n as u32, end);
                false
            }
            n if n > 0 => {
                self.buffers.give_back(bid);
                self.queue_recv(slot, direction);
                true
            }
            n if n == -EINTR || n == -EAGAIN => {
                self.queue_send(slot, direction, bid, start, end);
                false
            }
            n => {
                self.buffers.give_back(bid);
                let error = if n == 0 {
                    io::ErrorKind::WriteZero.into()
                } else {
                    io::Error::from_raw_os_error(-n)
                };
                self.end(slot, Err(error));
                true
            }
        }
    }

    /// Ends a tunnel: its sockets are shut down so that its operations complete, and its slot
    /// is freed once they have.
    fn end(&mut self, slot: usize, result: io::Result<()>) {
        let Some(t) = self.tunnels[slot].as_mut() else {
            return;
        };
        if t.ending.is_some() {
            return;
        }
        t.ending = Some(result);
        for fd in &t.fds {
            let _ = fd.shutdown(Shutdown::Both);
        }
        for (direction, flow) in t.flows.into_iter().enumerate() {
            let kind = match flow {
                Flow::Reading => RECV,
                Flow::Sending { .. } => SEND,
                Flow::NoBuffer | Flow::Done => continue,
            };
            let target = user_data(slot, kind + direction as u64);
            self.queued.push(
                opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(user_data(slot, CANCEL)),
            );
        }
        self.finish_if_quiet(slot);
    }

    fn finish_if_quiet(&mut self, slot: usize) {
        let quiet = self.tunnels[slot]
            .as_ref()
            .is_some_and(|t| t.ending.is_some() && t.in_flight == 0);
        if !quiet {
            return;
        }
        if let Some(mut t) = self.tunnels[slot].take() {
            let result = t.ending.take().unwrap_or(Ok(()));
            if let Some(done) = t.done.take() {
                // Its owner may be gone (the proxy is stopping): nothing to tell then.
                let _ = done.send(result);
            }
            // The sockets close here.
        }
        self.free_slots.push(slot);
    }

    /// Ends the tunnels that moved no byte for a whole period.
    fn check_idle(&mut self) {
        let now = Instant::now();
        for slot in 0..self.tunnels.len() {
            let Some(t) = self.tunnels[slot].as_mut() else {
                continue;
            };
            if t.ending.is_some() || now < t.next_check {
                continue;
            }
            if std::mem::take(&mut t.active) {
                t.next_check = now + t.idle;
            } else {
                self.end(
                    slot,
                    Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "tunnel idle timeout",
                    )),
                );
            }
        }
    }

    /// Pushes the queued operations into the submission queue, submitting when it is full.
    fn submit_queued(&mut self) -> io::Result<()> {
        let mut queued = std::mem::take(&mut self.queued);
        let mut rest = &queued[..];
        while !rest.is_empty() {
            let pushed = {
                let mut sq = self.ring.submission();
                let room = sq.capacity() - sq.len();
                let n = room.min(rest.len());
                // SAFETY: every entry points at memory that outlives its operation: the
                // buffer ring's data, the wake buffer and the tick timespec, all owned here.
                unsafe {
                    sq.push_multiple(&rest[..n])
                        .map_err(|_| io::Error::other("submission queue full"))?;
                }
                n
            };
            rest = &rest[pushed..];
            if !rest.is_empty() {
                self.ring.submit()?;
            }
        }
        queued.clear();
        self.queued = queued;
        Ok(())
    }
}

// Linux constants (the `libc` values, which io_uring reports negated).
const EINTR: i32 = 4;
const EAGAIN: i32 = 11;
const EBUSY: i32 = 16;
const ENOBUFS: i32 = 105;
const MSG_NOSIGNAL: i32 = 0x4000;
const MSG_WAITALL: i32 = 0x100;

#[cfg(test)]
mod tests;
