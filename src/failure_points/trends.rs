//! `bulwark report --since 24h`: failure-point trends from the Monitor's stored runs and the
//! supervision events. Pure: the runs and events are passed in (from the running server's API, or
//! from the database when no server runs).
//!
//! Each run's status of a point holds until the next run (the newest one until `until_ms`), so
//! the time in each status is the sum of those stretches.

use std::collections::BTreeMap;

use serde::Serialize;

/// One Monitor run: when, and each point's status (`ok`, `warn`, `critical`, `unknown`).
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub ts_ms: i64,
    pub statuses: BTreeMap<String, String>,
}

/// One supervision event, as far as trends need it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub event: String,
    pub actor: String,
    pub user: Option<String>,
}

/// One failure point over the window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trend {
    pub id: String,
    pub ok_ms: i64,
    pub warn_ms: i64,
    pub critical_ms: i64,
    pub unknown_ms: i64,
    /// Times its status changed.
    pub changes: u32,
    pub last_status: String,
}

impl Trend {
    /// Time it was not ok (warn or critical), the measure of a blocker.
    pub fn troubled_ms(&self) -> i64 {
        self.warn_ms + self.critical_ms
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrendReport {
    pub since_ms: i64,
    pub until_ms: i64,
    pub runs: usize,
    /// Every point seen, by id.
    pub points: Vec<Trend>,
    /// The points most often critical or warn, worst first (at most 5, none that were always ok).
    pub top_blockers: Vec<String>,
    /// Restarts per supervised actor (`actor` or `trader <user>`), most first.
    pub restarts: Vec<(String, u32)>,
    pub quarantines: Vec<String>,
}

pub fn report(runs: &[Run], events: &[Event], since_ms: i64, until_ms: i64) -> TrendReport {
    let mut points: Vec<Trend> = Vec::new();
    for (index, run) in runs.iter().enumerate() {
        let end_ms = runs.get(index + 1).map_or(until_ms, |next| next.ts_ms).min(until_ms);
        let start_ms = run.ts_ms.max(since_ms);
        let span_ms = (end_ms - start_ms).max(0);
        for (id, status) in &run.statuses {
            let position = match points.iter().position(|p| &p.id == id) {
                Some(position) => position,
                None => {
                    points.push(Trend {
                        id: id.clone(),
                        ok_ms: 0,
                        warn_ms: 0,
                        critical_ms: 0,
                        unknown_ms: 0,
                        changes: 0,
                        last_status: status.clone(),
                    });
                    points.len() - 1
                }
            };
            let trend = &mut points[position];
            if trend.last_status != *status {
                trend.changes += 1;
                trend.last_status = status.clone();
            }
            match status.as_str() {
                "ok" => trend.ok_ms += span_ms,
                "warn" => trend.warn_ms += span_ms,
                "critical" => trend.critical_ms += span_ms,
                _ => trend.unknown_ms += span_ms,
            }
        }
    }
    let mut blockers: Vec<&Trend> = points.iter().filter(|p| p.troubled_ms() > 0).collect();
    blockers.sort_by(|a, b| b.critical_ms.cmp(&a.critical_ms).then(b.troubled_ms().cmp(&a.troubled_ms())));
    let top_blockers = blockers.iter().take(5).map(|p| p.id.clone()).collect();
    let who = |event: &Event| match &event.user {
        Some(user) => format!("{} {user}", event.actor),
        None => event.actor.clone(),
    };
    let mut restarts: BTreeMap<String, u32> = BTreeMap::new();
    let mut quarantines = Vec::new();
    for event in events {
        match event.event.as_str() {
            "restarting" => *restarts.entry(who(event)).or_default() += 1,
            "quarantined" => quarantines.push(who(event)),
            _ => {}
        }
    }
    let mut restarts: Vec<(String, u32)> = restarts.into_iter().collect();
    restarts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    TrendReport { since_ms, until_ms, runs: runs.len(), points, top_blockers, restarts, quarantines }
}

fn duration(ms: i64) -> String {
    let seconds = ms / 1_000;
    match seconds {
        0 => "-".to_owned(),
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3_600, (s % 3_600) / 60),
    }
}

pub fn render_text(report: &TrendReport) -> String {
    let mut out = format!(
        "failure-point trends from {} to {} ({} monitor run(s))\n",
        crate::clock::rfc3339_ms(report.since_ms),
        crate::clock::rfc3339_ms(report.until_ms),
        report.runs
    );
    if report.runs == 0 {
        out.push_str("no monitor runs in this window\n");
    } else {
        out.push_str(&format!(
            "{:<26} {:>9} {:>9} {:>9} {:>9} {:>7}  {}\n",
            "FAILURE POINT", "OK", "WARN", "CRITICAL", "UNKNOWN", "CHANGES", "NOW"
        ));
        for point in &report.points {
            out.push_str(&format!(
                "{:<26} {:>9} {:>9} {:>9} {:>9} {:>7}  {}\n",
                point.id,
                duration(point.ok_ms),
                duration(point.warn_ms),
                duration(point.critical_ms),
                duration(point.unknown_ms),
                point.changes,
                point.last_status
            ));
        }
    }
    let blockers = if report.top_blockers.is_empty() { "none".to_owned() } else { report.top_blockers.join(", ") };
    out.push_str(&format!("top blockers: {blockers}\n"));
    let restarts = if report.restarts.is_empty() {
        "none".to_owned()
    } else {
        report.restarts.iter().map(|(who, count)| format!("{who} ×{count}")).collect::<Vec<_>>().join(", ")
    };
    out.push_str(&format!("restarts: {restarts}\n"));
    if !report.quarantines.is_empty() {
        out.push_str(&format!("quarantined: {}\n", report.quarantines.join(", ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(ts_ms: i64, statuses: &[(&str, &str)]) -> Run {
        Run { ts_ms, statuses: statuses.iter().map(|(id, s)| (id.to_string(), s.to_string())).collect() }
    }

    #[test]
    fn each_status_holds_until_the_next_run_and_blockers_rank_by_critical_time() {
        let runs = [
            run(1_000, &[("SYS-DATABASE", "ok"), ("SYS-PROCESS", "ok")]),
            run(61_000, &[("SYS-DATABASE", "critical"), ("SYS-PROCESS", "warn")]),
            run(121_000, &[("SYS-DATABASE", "ok"), ("SYS-PROCESS", "warn")]),
        ];
        let events = [
            Event { event: "restarting".into(), actor: "trader".into(), user: Some("u2".into()) },
            Event { event: "restarting".into(), actor: "trader".into(), user: Some("u2".into()) },
            Event { event: "quarantined".into(), actor: "trader".into(), user: Some("u2".into()) },
            Event { event: "restarting".into(), actor: "market_data".into(), user: None },
        ];
        let report = report(&runs, &events, 0, 181_000);
        let database = &report.points[0];
        assert_eq!((database.id.as_str(), database.ok_ms, database.critical_ms), ("SYS-DATABASE", 120_000, 60_000));
        assert_eq!((database.changes, database.last_status.as_str()), (2, "ok"));
        let process = &report.points[1];
        assert_eq!((process.ok_ms, process.warn_ms, process.changes), (60_000, 120_000, 1));
        assert_eq!(report.top_blockers, ["SYS-DATABASE", "SYS-PROCESS"]);
        assert_eq!(report.restarts, [("trader u2".to_owned(), 2), ("market_data".to_owned(), 1)]);
        assert_eq!(report.quarantines, ["trader u2"]);
        let text = render_text(&report);
        assert!(text.contains("SYS-DATABASE"), "{text}");
        assert!(text.contains("top blockers: SYS-DATABASE, SYS-PROCESS"), "{text}");
        assert!(text.contains("restarts: trader u2 ×2, market_data ×1"), "{text}");
    }

    #[test]
    fn a_window_without_runs_says_so() {
        let report = report(&[], &[], 0, 10);
        assert!(render_text(&report).contains("no monitor runs in this window"));
    }
}
