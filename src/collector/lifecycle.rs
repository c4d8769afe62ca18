//! The execution being collected, as the collector knows it between cycles: what was listed of
//! it, where paging of its two event streams stands, and what was read and counted. The state
//! stores persist it; they do not define it.

use serde::{Deserialize, Serialize};

use crate::model::{ExecutionError, ExecutionStatus};

/// Where paging of one event stream stands: the token that fetched the tail page (`None`: the
/// first page) and how many of that page's items were consumed; `total` items read in all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub token: Option<String>,
    pub consumed: usize,
    pub total: usize,
}

/// An execution being collected. Kept in memory while not finished; saved on each change.
#[derive(Clone, Debug, PartialEq)]
pub struct Tracked {
    pub arn: String,
    pub flow_id: String,
    pub alias: String,
    pub version: String,
    pub created_at: i64,
    pub ended_at: Option<i64>,
    pub status: ExecutionStatus,
    /// Seen Running (or ended within `settle_secs` when found): gets a settle re-read.
    pub needs_settle: bool,
    /// When the terminal status was first seen.
    pub terminal_seen_at: Option<i64>,
    pub errors: Option<Vec<ExecutionError>>,
    pub node_cursor: Cursor,
    pub flow_cursor: Cursor,
    pub final_read: bool,
    pub unknown_status_counted: bool,
}

/// Where a tracked execution is in its life, derived from its state (never stored beside it).
/// Before it is tracked it is only listed; once done it leaves the registry and the store keeps
/// it as finished, so neither is a phase here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Running (or of a status this version does not know): its events are read each poll.
    Reading,
    /// Ended less than `settle_secs` ago after it was seen running: waiting for the re-read.
    Settling,
    /// Ended: the final read is due or done; it is finished once its spans are accepted.
    FinalRead,
}

impl Tracked {
    /// The phase at `now` with the settle time `settle` (nanoseconds).
    pub fn phase(&self, now: i64, settle: i64) -> Phase {
        if !self.status.is_terminal() {
            return Phase::Reading;
        }
        if self.final_read || !self.needs_settle {
            return Phase::FinalRead;
        }
        let settle_at = self.ended_at.or(self.terminal_seen_at).unwrap_or(now) + settle;
        if now >= settle_at {
            Phase::FinalRead
        } else {
            Phase::Settling
        }
    }
}
