//! What to do with each tracked execution now: a pure decision on its state and the clock.

use super::lifecycle::{Phase, Tracked};

/// Work on one execution in one cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    /// Read new events (running, or an unknown status).
    Fetch,
    /// The final read of a terminal execution, then finish it.
    Final,
}

/// The work an execution has now: running (or of unknown status) executions are read; a
/// terminal one gets its final read once it settled (`settle` after it ended, or at once when it
/// needs no settle re-read); meanwhile it waits (every span it closed so far is out or in the
/// outbox). `None`: nothing now.
pub fn work_for(t: &Tracked, now: i64, settle: i64) -> Option<Work> {
    match t.phase(now, settle) {
        Phase::Reading => Some(Work::Fetch),
        Phase::FinalRead => Some(Work::Final),
        Phase::Settling => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::tracked;

    #[test]
    fn work_follows_the_status_and_the_settle_time() {
        let at = |status: &str, ended: Option<i64>, seen: Option<i64>, needs_settle: bool, final_read: bool| {
            let mut t = tracked("a");
            t.status = crate::model::ExecutionStatus::parse(status);
            t.ended_at = ended;
            t.terminal_seen_at = seen;
            t.needs_settle = needs_settle;
            t.final_read = final_read;
            t
        };
        // (state, now) -> work, with settle = 10.
        let cases: [(Tracked, i64, Option<Work>); 9] = [
            (at("Running", None, None, true, false), 100, Some(Work::Fetch)),
            (at("Paused", None, None, true, false), 100, Some(Work::Fetch)),
            (at("Succeeded", Some(95), Some(96), true, false), 100, None),
            (at("Succeeded", Some(95), Some(96), true, false), 105, Some(Work::Final)),
            (at("Failed", None, Some(92), true, false), 101, None),
            (at("Failed", None, Some(92), true, false), 102, Some(Work::Final)),
            (at("Aborted", Some(99), None, false, false), 100, Some(Work::Final)),
            (at("TimedOut", Some(99), None, true, true), 100, Some(Work::Final)),
            // No end time known: it waits (discovery records when it saw the terminal status,
            // so this state does not arise from a listing).
            (at("Succeeded", None, None, true, false), 100, None),
        ];
        for (i, (t, now, expected)) in cases.iter().enumerate() {
            assert_eq!(work_for(t, *now, 10), *expected, "case {i}: {:?} at {now}", t.status);
        }
    }
}
