//! Which restore points a retention policy keeps: Proxmox Backup Server's
//! selection, as a pure function of the points' local times.
//!
//! The rules run in the order last, hourly, daily, weekly (ISO weeks, Monday
//! first), monthly, yearly. Each `keep-X N` walks the points newest first and
//! keeps the newest point of each of the N most recent periods that hold a
//! point not already kept by an earlier rule; a point it passes over inside
//! a period it already counted is removed, and later rules do not look at it
//! again. Points no rule keeps are removed. Unlike PBS, the newest point is
//! always kept (a nightly run must always have something to build on).

use chrono::{Datelike, NaiveDateTime, Timelike};
use std::collections::{HashMap, HashSet};
use std::fmt;

/// How many periods of each kind to keep (None: the rule is not used).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// --keep-last.
    pub last: Option<usize>,
    /// --keep-hourly.
    pub hourly: Option<usize>,
    /// --keep-daily.
    pub daily: Option<usize>,
    /// --keep-weekly.
    pub weekly: Option<usize>,
    /// --keep-monthly.
    pub monthly: Option<usize>,
    /// --keep-yearly.
    pub yearly: Option<usize>,
}

impl Policy {
    /// True when at least one rule is given.
    pub fn is_set(&self) -> bool {
        self.rules().iter().any(|(_, n)| n.is_some())
    }

    fn rules(&self) -> [(Rule, Option<usize>); 6] {
        [
            (Rule::Last, self.last),
            (Rule::Hourly, self.hourly),
            (Rule::Daily, self.daily),
            (Rule::Weekly, self.weekly),
            (Rule::Monthly, self.monthly),
            (Rule::Yearly, self.yearly),
        ]
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .rules()
            .iter()
            .filter_map(|(r, n)| n.map(|n| format!("--keep-{r} {n}")))
            .collect();
        f.write_str(&parts.join(" "))
    }
}

/// The rule that keeps a point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rule {
    /// --keep-last.
    Last,
    /// --keep-hourly.
    Hourly,
    /// --keep-daily.
    Daily,
    /// --keep-weekly.
    Weekly,
    /// --keep-monthly.
    Monthly,
    /// --keep-yearly.
    Yearly,
    /// The newest point, which is always kept.
    Newest,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Last => "last",
            Rule::Hourly => "hourly",
            Rule::Daily => "daily",
            Rule::Weekly => "weekly",
            Rule::Monthly => "monthly",
            Rule::Yearly => "yearly",
            Rule::Newest => "newest",
        })
    }
}

/// The period of `t` under `rule`: points in one period compete for one slot.
fn period(rule: Rule, t: &NaiveDateTime) -> String {
    match rule {
        Rule::Last | Rule::Newest => t.format("%Y%m%d-%H%M%S%.f").to_string(),
        Rule::Hourly => format!("{}/{}/{}/{}", t.year(), t.month(), t.day(), t.hour()),
        Rule::Daily => format!("{}/{}/{}", t.year(), t.month(), t.day()),
        Rule::Weekly => {
            let w = t.iso_week();
            format!("{}/{}", w.year(), w.week())
        }
        Rule::Monthly => format!("{}/{}", t.year(), t.month()),
        Rule::Yearly => format!("{}", t.year()),
    }
}

/// Decides, for each point (by index into `times`, any order), the rule that
/// keeps it, or None when it is removed.
pub fn select(times: &[NaiveDateTime], policy: &Policy) -> Vec<Option<Rule>> {
    let mut order: Vec<usize> = (0..times.len()).collect();
    order.sort_by(|a, b| times[*b].cmp(&times[*a]));
    // Some(rule): kept by it; None in the map: removed by a rule that passed it.
    let mut marks: HashMap<usize, Option<Rule>> = HashMap::new();
    for (rule, keep) in policy.rules() {
        let Some(keep) = keep else { continue };
        let already: HashSet<String> = order
            .iter()
            .filter(|i| matches!(marks.get(i), Some(Some(_))))
            .map(|&i| period(rule, &times[i]))
            .collect();
        let mut counted: HashSet<String> = HashSet::new();
        for &i in &order {
            if marks.contains_key(&i) {
                continue;
            }
            let p = period(rule, &times[i]);
            if already.contains(&p) {
                continue;
            }
            if counted.contains(&p) {
                marks.insert(i, None);
            } else {
                if counted.len() >= keep {
                    break;
                }
                counted.insert(p);
                marks.insert(i, Some(rule));
            }
        }
    }
    let mut out: Vec<Option<Rule>> = (0..times.len())
        .map(|i| marks.get(&i).copied().flatten())
        .collect();
    if let Some(&newest) = order.first() {
        if out[newest].is_none() {
            out[newest] = Some(Rule::Newest);
        }
    }
    out
}

/// A restore point's local time from its name (`YYYYMMDD-HHMMSS`).
pub fn point_time(point: &str) -> Option<NaiveDateTime> {
    crate::store::naming::point_time(point)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S").unwrap()
    }

    /// The kept points of `list` under `policy`, oldest first.
    fn kept(list: &[&str], policy: Policy) -> Vec<String> {
        let times: Vec<NaiveDateTime> = list.iter().map(|s| t(s)).collect();
        let marks = select(&times, &policy);
        let mut out: Vec<String> = list
            .iter()
            .zip(&marks)
            .filter(|(_, m)| m.is_some())
            .map(|(s, _)| s.to_string())
            .collect();
        out.sort();
        out
    }

    fn removed(list: &[&str], policy: Policy) -> Vec<String> {
        let k = kept(list, policy);
        list.iter()
            .filter(|s| !k.contains(&s.to_string()))
            .map(|s| s.to_string())
            .collect()
    }

    fn p(
        last: Option<usize>,
        hourly: Option<usize>,
        daily: Option<usize>,
        weekly: Option<usize>,
        monthly: Option<usize>,
        yearly: Option<usize>,
    ) -> Policy {
        Policy {
            last,
            hourly,
            daily,
            weekly,
            monthly,
            yearly,
        }
    }

    // The cases of Proxmox Backup Server's own prune tests
    // (proxmox-backup, tests/prune.rs), times taken as local.

    #[test]
    fn proxmox_hourly() {
        let list = [
            "2019-11-15T09:39:15",
            "2019-11-15T10:49:15",
            "2019-11-15T10:59:15",
            "2019-11-15T11:39:15",
            "2019-11-15T11:49:15",
            "2019-11-15T11:59:15",
        ];
        assert_eq!(
            removed(&list, p(None, Some(3), None, None, None, None)),
            [
                "2019-11-15T10:49:15",
                "2019-11-15T11:39:15",
                "2019-11-15T11:49:15"
            ]
        );
        assert_eq!(
            kept(&list, p(None, Some(2), None, None, None, None)),
            ["2019-11-15T10:59:15", "2019-11-15T11:59:15"]
        );
    }

    #[test]
    fn proxmox_simple2() {
        let list = [
            "2018-11-15T11:59:15",
            "2019-11-15T11:59:15",
            "2019-11-21T11:59:15",
            "2019-11-22T11:59:15",
            "2019-11-29T11:59:15",
            "2019-12-01T11:59:15",
            "2019-12-02T11:59:15",
            "2019-12-03T11:59:15",
            "2019-12-04T11:59:15",
        ];
        #[rustfmt::skip]
        let table: Vec<(Policy, Vec<&str>)> = vec![
            (p(None, None, Some(1), None, None, None), vec!["2019-12-04T11:59:15"]),
            (p(Some(1), None, Some(1), None, None, None), vec!["2019-12-03T11:59:15", "2019-12-04T11:59:15"]),
            (p(None, None, Some(1), Some(1), None, None), vec!["2019-12-01T11:59:15", "2019-12-04T11:59:15"]),
            (p(None, None, Some(1), Some(1), Some(1), None), vec!["2019-11-22T11:59:15", "2019-12-01T11:59:15", "2019-12-04T11:59:15"]),
            (p(None, None, None, None, Some(1), Some(1)), vec!["2018-11-15T11:59:15", "2019-12-04T11:59:15"]),
        ];
        for (policy, want) in table {
            assert_eq!(kept(&list, policy), want, "{policy}");
        }
    }

    #[test]
    fn proxmox_simple() {
        let list = [
            "2019-12-02T11:59:15",
            "2019-12-03T11:59:15",
            "2019-12-04T11:59:15",
            "2019-12-04T12:59:15",
        ];
        let all_but_newest = vec![
            "2019-12-02T11:59:15",
            "2019-12-03T11:59:15",
            "2019-12-04T11:59:15",
        ];
        #[rustfmt::skip]
        let table: Vec<(Policy, Vec<&str>)> = vec![
            (p(Some(4), None, None, None, None, None), vec![]),
            (p(Some(3), None, None, None, None, None), vec!["2019-12-02T11:59:15"]),
            (p(Some(2), None, None, None, None, None), vec!["2019-12-02T11:59:15", "2019-12-03T11:59:15"]),
            (p(Some(1), None, None, None, None, None), all_but_newest.clone()),
            // PBS removes everything with keep-last 0; the newest point stays here.
            (p(Some(0), None, None, None, None, None), all_but_newest.clone()),
            (p(Some(2), None, Some(2), None, None, None), vec![]),
            (p(None, None, Some(3), None, None, None), vec!["2019-12-04T11:59:15"]),
            (p(None, None, Some(2), None, None, None), vec!["2019-12-02T11:59:15", "2019-12-04T11:59:15"]),
            (p(None, None, None, Some(5), None, None), all_but_newest.clone()),
            (p(None, None, Some(1), Some(5), None, None), all_but_newest.clone()),
            (p(None, None, None, None, Some(6), None), all_but_newest.clone()),
            (p(None, None, None, None, None, Some(7)), all_but_newest.clone()),
            (p(None, None, None, Some(5), Some(6), Some(7)), all_but_newest.clone()),
        ];
        for (policy, want) in table {
            assert_eq!(removed(&list, policy), want, "{policy}");
        }
    }

    #[test]
    fn weeks_are_iso_weeks_across_the_new_year() {
        // 2020-12-31 (Thu) and 2021-01-03 (Sun) are both in ISO week 2020-W53;
        // 2021-01-04 (Mon) starts 2021-W01.
        let list = [
            "2020-12-28T03:00:00",
            "2020-12-31T03:00:00",
            "2021-01-03T03:00:00",
            "2021-01-04T03:00:00",
        ];
        assert_eq!(
            kept(&list, p(None, None, None, Some(2), None, None)),
            ["2021-01-03T03:00:00", "2021-01-04T03:00:00"]
        );
    }

    #[test]
    fn each_point_says_which_rule_keeps_it() {
        let times: Vec<NaiveDateTime> = [
            "2026-11-20T02:00:00",
            "2026-11-21T02:00:00",
            "2026-11-22T02:00:00",
        ]
        .iter()
        .map(|s| t(s))
        .collect();
        let marks = select(&times, &p(Some(1), None, Some(1), None, None, None));
        assert_eq!(marks, [None, Some(Rule::Daily), Some(Rule::Last)]);
        assert_eq!(select(&[], &p(Some(1), None, None, None, None, None)), []);
        assert_eq!(
            point_time("20261122-031306"),
            Some(t("2026-11-22T03:13:06"))
        );
        assert_eq!(point_time("2026-11-22"), None);
    }
}
