//! Discovery: listing each flow's executions, admitting new ones into the registry of tracked
//! executions and learning the status changes of known ones, with an early stop only when the
//! pages prove that nothing new or active can follow.

use super::events::{AliasSeen, ListingFailed, ListingSucceeded, StoreFailed};
use super::lifecycle::{Cursor, Tracked};
use super::{Collector, SECOND};
use crate::metrics::FlowLabels;
use crate::source::ApiError;
use crate::timefmt::now_nanos;

/// Whether a listing may stop before its last page: the pages seen so far are newest-first,
/// this page brought nothing new, and it is strictly older than every tracked running execution
/// (on a tie, one may still be on a later page). `page_oldest` is `i64::MAX` for an empty page.
/// How far a listing reads: to its last page, or (incremental) until the pages prove that
/// nothing new or active follows; an incremental listing still reads everything every
/// `full_scan_secs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scan {
    Full,
    Incremental,
}

/// Whether a listing admits executions it does not track yet (`run --once` admits only in its
/// first listing of each flow, then follows the status of what it found).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    New,
    KnownOnly,
}

pub fn may_stop_listing(descending: bool, page_has_new: bool, page_oldest: i64, oldest_active: Option<i64>) -> bool {
    descending && !page_has_new && page_oldest < i64::MAX && oldest_active.is_none_or(|a| page_oldest < a)
}

impl Collector {
    /// Lists one flow's executions: admits new ones (with `Admission::New`), updates the status
    /// of known ones. An incremental scan stops early only when the pages seen prove
    /// newest-first order and nothing new or active can follow; a full one reads every page.
    pub(super) async fn discover(&mut self, f: usize, now: i64, last_poll: Option<i64>, scan: Scan, admission: Admission) -> Result<(), ApiError> {
        let lookback = self.poll.lookback_secs as i64 * SECOND;
        // After downtime, reach back to the last poll too (with an hour of margin).
        let cutoff = match last_poll {
            Some(t) => (now - lookback).min(t - 3600 * SECOND),
            None => now - lookback,
        };
        let aliases: Vec<Option<String>> =
            if self.flows[f].aliases.is_empty() { vec![None] } else { self.flows[f].aliases.iter().cloned().map(Some).collect() };
        let flow_id = self.flows[f].id.clone();
        let settle = self.poll.settle_secs as i64 * SECOND;
        // What the listing changed, to save: copies of the registry's entries, made as they
        // change (one copy each, moved to the store).
        let mut changed: Vec<Tracked> = Vec::new();
        // Taken once per scan: executions only turn terminal during it, so this bound can only
        // be older than the current one, which pages further, never less far.
        let oldest_active = self.tracked.values().filter(|t| t.flow_id == flow_id && !t.status.is_terminal()).map(|t| t.created_at).min();
        for alias in aliases {
            let mut token = None;
            let mut previous_created = i64::MAX;
            let mut descending = true;
            loop {
                let (items, next) = self.flows[f].source.list_executions(&flow_id, alias.as_deref(), token.take()).await?;
                let mut page_has_new = false;
                let mut page_oldest = i64::MAX;
                // Finished executions are asked of the store (one look-up per page), not kept in
                // memory: memory does not grow with the number of finished executions. When
                // the store cannot tell, nothing new is admitted from the page.
                let untracked: Vec<&str> = items.iter().map(|s| s.execution_arn.as_str()).filter(|a| !self.tracked.contains_key(*a)).collect();
                // (Nothing to ask when the page holds only tracked executions: the steady state.)
                let known = if untracked.is_empty() { Ok(Default::default()) } else { self.store.finished_among(&untracked).await };
                let finished = match known {
                    Ok(finished) => Some(finished),
                    Err(e) => {
                        self.events.emit(StoreFailed { operation: "listing", doing: "look up finished executions (new ones are admitted later)", error: &e });
                        None
                    }
                };
                for s in items {
                    let created = s.created_at.0;
                    if created > previous_created {
                        descending = false;
                    }
                    previous_created = created;
                    page_oldest = page_oldest.min(created);
                    if let Some(t) = self.tracked.get_mut(&s.execution_arn) {
                        if t.status != s.status || t.ended_at != s.ended_at.map(|e| e.0) {
                            if s.status.is_terminal() && t.terminal_seen_at.is_none() {
                                t.terminal_seen_at = Some(now);
                            }
                            t.status = s.status;
                            t.ended_at = s.ended_at.map(|e| e.0);
                            changed.push(t.clone());
                        }
                        continue;
                    }
                    if admission == Admission::KnownOnly || created < cutoff || created == 0 || finished.as_ref().is_none_or(|f| f.contains(&s.execution_arn)) {
                        continue;
                    }
                    page_has_new = true;
                    let terminal = s.status.is_terminal();
                    let ended = s.ended_at.map(|e| e.0);
                    // The summary's strings are moved, not copied: it is not used again.
                    let t = Tracked {
                        arn: s.execution_arn,
                        flow_id: flow_id.clone(),
                        alias: s.flow_alias_identifier,
                        version: s.flow_version,
                        created_at: created,
                        ended_at: ended,
                        status: s.status,
                        needs_settle: !terminal || ended.is_none_or(|e| e > now - settle),
                        terminal_seen_at: terminal.then_some(now),
                        errors: None,
                        node_cursor: Cursor::default(),
                        flow_cursor: Cursor::default(),
                        final_read: false,
                        unknown_status_counted: false,
                    };
                    changed.push(t.clone());
                    if self.seen_aliases.insert((flow_id.clone(), t.alias.clone())) {
                        self.events.emit(AliasSeen(&FlowLabels { flow_id: flow_id.clone(), flow_name: self.flows[f].name.clone(), alias: t.alias.clone() }));
                    }
                    self.tracked.insert(t.arn.clone(), t);
                }
                let Some(next_token) = next else { break };
                if scan == Scan::Incremental && may_stop_listing(descending, page_has_new, page_oldest, oldest_active) {
                    break;
                }
                token = Some(next_token);
            }
        }
        if !changed.is_empty() {
            if let Err(e) = self.store.save_all(changed).await {
                self.events.emit(StoreFailed { operation: "listing", doing: "save the listing (it is saved again with the next one)", error: &e });
            }
        }
        Ok(())
    }

    pub(super) async fn discover_all(&mut self, scan: Scan, admission: Admission) {
        let all: Vec<usize> = (0..self.flows.len()).filter(|f| self.holds(&self.flows[*f].id)).collect();
        self.discover_flows(&all, scan, admission).await;
    }

    /// Lists the given flows; returns those whose listing failed (shown on `/` and logged).
    pub(super) async fn discover_flows(&mut self, flows: &[usize], scan: Scan, admission: Admission) -> Vec<usize> {
        let now = now_nanos();
        let mut failed = Vec::new();
        for &f in flows {
            if !self.renew_if_due().await || !self.holds(&self.flows[f].id) {
                continue;
            }
            let flow_id = self.flows[f].id.clone();
            let marks = match self.store.flow_marks(&flow_id).await {
                Ok(marks) => marks,
                Err(e) => {
                    self.events.emit(StoreFailed { operation: "listing", doing: "read the flow's poll marks (the flow is listed in full)", error: &e });
                    Default::default()
                }
            };
            let (last_poll, last_full) = (marks.last_poll, marks.last_full_scan);
            let full = scan == Scan::Full || last_full.is_none_or(|t| now - t >= self.poll.full_scan_secs as i64 * SECOND);
            let scan_now = if full { Scan::Full } else { Scan::Incremental };
            match self.discover(f, now, last_poll, scan_now, admission).await {
                Ok(()) => {
                    if let Err(e) = self.store.set_flow_marks(&flow_id, now, full.then_some(now)).await {
                        self.events.emit(StoreFailed {
                            operation: "listing",
                            doing: "save the flow's poll marks (the next listing looks further back)",
                            error: &e,
                        });
                    }
                    self.events.emit(ListingSucceeded { flow_id: &flow_id, at: now });
                }
                Err(e) => {
                    self.events.emit(ListingFailed { flow_id: &flow_id, error: &e });
                    failed.push(f);
                }
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::may_stop_listing;

    #[test]
    fn a_listing_stops_early_only_when_the_order_proves_nothing_can_follow() {
        // (descending, page has new, page oldest, oldest running) -> may stop
        let cases: [(bool, bool, i64, Option<i64>, bool); 8] = [
            (true, false, 100, None, true),
            (true, false, 100, Some(101), true),
            (true, false, 100, Some(100), false),
            (true, false, 100, Some(50), false),
            (true, true, 100, None, false),
            (false, false, 100, None, false),
            (true, false, i64::MAX, None, false),
            (false, true, 100, Some(200), false),
        ];
        for (i, (descending, new, oldest, active, expected)) in cases.into_iter().enumerate() {
            assert_eq!(may_stop_listing(descending, new, oldest, active), expected, "case {i}");
        }
    }
}
