//! Counts of long-lived things (connections, snapshot streams) open per client address and
//! in total. Each is counted by a [`Slot`] for as long as it lives, so that one client
//! cannot hold them all and the process cannot be made to hold more than it can serve.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::auth::client_bucket;

/// How many may be open from one client address, and in total.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub per_client: usize,
    pub total: usize,
}

impl Caps {
    /// What one client may hold once three quarters of `total` are taken: a sixteenth of
    /// its usual share (at least one). Clients holding a few keep being admitted then, while
    /// those holding many are not, so that a handful of addresses holding their full share
    /// each cannot leave nothing for everyone else.
    fn per_client_under_pressure(self) -> usize {
        (self.per_client / 16).max(1)
    }

    fn under_pressure(self, open: usize) -> bool {
        open >= self.total - self.total / 4
    }
}

/// Why a new one was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// This client has its share.
    Client,
    /// The process has all it takes.
    Total,
}

/// The open count, in total and by client (IPv6 clients by their /64, as the rate limiter
/// counts them; `None` when the address is unknown).
#[derive(Default)]
pub struct OpenCounts {
    open: Mutex<(usize, HashMap<Option<IpAddr>, usize>)>,
}

/// One admitted connection or stream, counted until it is dropped.
pub struct Slot {
    counts: Arc<OpenCounts>,
    client: Option<IpAddr>,
}

impl OpenCounts {
    /// A slot for one more from `client`, unless that would pass a cap. Counted only once
    /// admitted, so refused clients leave nothing behind.
    pub fn admit(self: &Arc<Self>, client: Option<IpAddr>, caps: Caps) -> Result<Slot, Refused> {
        let client = client.map(client_bucket);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_client) = &mut *open;
        if *total >= caps.total {
            return Err(Refused::Total);
        }
        let mine = by_client.get(&client).copied().unwrap_or(0);
        let share = if caps.under_pressure(*total) {
            caps.per_client_under_pressure().min(caps.per_client)
        } else {
            caps.per_client
        };
        if mine >= share {
            return Err(Refused::Client);
        }
        *by_client.entry(client).or_default() += 1;
        *total += 1;
        Ok(Slot {
            counts: self.clone(),
            client,
        })
    }

    /// How many are open in total.
    pub fn total(&self) -> usize {
        self.open.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.counts.open.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_client) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(mine) = by_client.get_mut(&self.client) {
            *mine = mine.saturating_sub(1);
            if *mine == 0 {
                by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_client_and_in_total_and_released_when_dropped() {
        let counts = Arc::new(OpenCounts::default());
        let caps = Caps {
            per_client: 2,
            total: 3,
        };
        let a: IpAddr = "192.0.2.1".parse().expect("address");
        let b: IpAddr = "2001:db8::1".parse().expect("address");
        let b_neighbour: IpAddr = "2001:db8::2".parse().expect("address");
        let first = counts.admit(Some(a), caps).expect("first");
        let _second = counts.admit(Some(a), caps).expect("second");
        assert_eq!(counts.admit(Some(a), caps).err(), Some(Refused::Client));
        let _third = counts.admit(Some(b), caps).expect("another client");
        // The same /64 is the same client; the process is full anyway.
        assert_eq!(
            counts.admit(Some(b_neighbour), caps).err(),
            Some(Refused::Total)
        );
        assert_eq!(counts.total(), 3);
        drop(first);
        assert_eq!(counts.total(), 2);
        // A refusal leaves no entry behind, and the released slot is free again.
        let _again = counts.admit(Some(a), caps).expect("released");
        assert_eq!(counts.admit(None, caps).err(), Some(Refused::Total));
        let open = counts.open.lock().expect("lock");
        assert_eq!(open.1.len(), 2, "{:?}", open.1);
    }

    /// Past three quarters of the total, a client holding many is refused while one
    /// holding few is still admitted.
    #[test]
    fn under_pressure_clients_holding_many_are_refused_first() {
        let counts = Arc::new(OpenCounts::default());
        let caps = Caps {
            per_client: 32,
            total: 40,
        };
        let heavy: IpAddr = "192.0.2.1".parse().expect("address");
        let light: IpAddr = "192.0.2.2".parse().expect("address");
        let mut slots: Vec<_> = (0..30)
            .map(|_| counts.admit(Some(heavy), caps).expect("under the share"))
            .collect();
        assert_eq!(counts.admit(Some(heavy), caps).err(), Some(Refused::Client));
        // 30 of 40 open: a client with one gets a second, the heavy one nothing more.
        slots.push(counts.admit(Some(light), caps).expect("a light client"));
        slots.push(counts.admit(Some(light), caps).expect("still light"));
        assert_eq!(counts.admit(Some(light), caps).err(), Some(Refused::Client));
        let newcomer: IpAddr = "192.0.2.3".parse().expect("address");
        assert!(counts.admit(Some(newcomer), caps).is_ok());
    }
}
