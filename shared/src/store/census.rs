//! A job's census: its per-task states counted in Redis by one atomic, read-only script
//! (`lua/census.lua`: `HSCAN` of the job's task-state hash, in the job's slot, so it works
//! on a Redis Cluster too), the counters those states imply, and where the counters of the
//! status hash disagree. `producer status --verify` builds on it.

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde::Serialize;
use uuid::Uuid;

use super::{Lua, ScriptCall, Store, StoreError};

const CENSUS_LUA: &str = include_str!("lua/census.lua");

/// The most task states one census counts: the script blocks Redis while it runs (about a
/// second per million states), so larger jobs are refused.
pub const MAX_CENSUS: u64 = 1_000_000;

/// The state counters of a job's status hash (its fields besides `total`).
pub const COUNTERS: [&str; 6] = [
    "fetched",
    "processed",
    "aggregated",
    "retrying",
    "deferred",
    "dead",
];

/// Values of the [`COUNTERS`], by name (every one present, 0 when absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Counters(BTreeMap<&'static str, u64>);

impl Default for Counters {
    fn default() -> Self {
        Counters(COUNTERS.iter().map(|&name| (name, 0)).collect())
    }
}

impl Counters {
    /// The counter `name` (0 for a name not in [`COUNTERS`]).
    pub fn get(&self, name: &str) -> u64 {
        self.0.get(name).copied().unwrap_or(0)
    }

    fn bump(&mut self, name: &'static str, by: u64) {
        *self.0.entry(name).or_default() += by;
    }

    /// The counters of a status hash's fields.
    fn of_status(status: &HashMap<String, i64>) -> Self {
        let mut counters = Counters::default();
        for name in COUNTERS {
            let value = status.get(name).copied().unwrap_or(0).max(0) as u64;
            counters.bump(name, value);
        }
        counters
    }

    /// Counts `tasks` tasks in `state` (level + 10 * flag, as `lua/state.lua` stores it);
    /// false for a value no script writes.
    fn add_state(&mut self, state: u64, tasks: u64) -> bool {
        let (level, flag) = (state % 10, state / 10);
        if level > 3 || flag > 3 || (level == 3 && flag != 0) {
            return false;
        }
        for (reached, name) in [(1, "fetched"), (2, "processed"), (3, "aggregated")] {
            if level >= reached {
                self.bump(name, tasks);
            }
        }
        match flag {
            1 => self.bump("retrying", tasks),
            2 => self.bump("dead", tasks),
            3 => self.bump("deferred", tasks),
            _ => {}
        }
        true
    }
}

/// Tasks per stage: the stage queue each is expected in next.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PerStage {
    pub fetch: u64,
    pub process: u64,
    pub results: u64,
}

impl PerStage {
    pub fn get(&self, level: usize) -> u64 {
        [self.fetch, self.process, self.results][level]
    }

    pub fn add(&mut self, level: usize, tasks: u64) {
        match level {
            0 => self.fetch += tasks,
            1 => self.process += tasks,
            _ => self.results += tasks,
        }
    }
}

/// One job's census.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Census {
    pub job_id: Uuid,
    pub total: u64,
    /// The counters of the job's status hash.
    pub counters: Counters,
    /// The counters the task states imply.
    pub states: Counters,
    /// Tasks with a state (some stage marked them); the other `total - known` were never
    /// marked, so they are expected in the fetch queue.
    pub known: u64,
    /// Task states no script writes.
    pub unreadable: u64,
    /// Tasks neither final (aggregated, dead) nor waiting in a delay queue (retrying,
    /// deferred), by the stage queue they are expected in next (fetch counts the tasks
    /// never marked).
    pub expected_in: PerStage,
    /// Up to the asked number of those tasks per stage (never-marked ones have no id here).
    #[serde(skip)]
    pub samples: [Vec<Uuid>; 3],
}

/// What `lua/census.lua` returns.
type Raw = (u64, u64, Vec<String>, Vec<String>, HashMap<String, i64>);

impl Census {
    /// Counts the states of `job`, listing up to `limit` task ids per stage; `None` for a
    /// job Redis does not know.
    pub async fn take(
        store: &Store,
        job: Uuid,
        limit: usize,
    ) -> Result<Option<Census>, StoreError> {
        static SCRIPT: OnceLock<Lua> = OnceLock::new();
        let script = SCRIPT.get_or_init(|| Lua::new(CENSUS_LUA));
        let names = store.names();
        let mut call = ScriptCall::new(script);
        call.key(names.status_key(job))
            .key(names.tasks_key(job))
            .arg(limit)
            .arg(MAX_CENSUS);
        let raw: Raw = store.eval(&call).await?;
        Census::from_raw(job, raw, &names.tasks_key(job))
    }

    fn from_raw(job: Uuid, raw: Raw, key: &str) -> Result<Option<Census>, StoreError> {
        let (known, scanned, states, listed, status) = raw;
        if status.is_empty() && known == 0 {
            return Ok(None);
        }
        let corrupt = |detail: String| StoreError::Corrupt {
            key: key.to_string(),
            detail,
        };
        if scanned != known {
            return Err(corrupt(format!(
                "the census saw {scanned} of {known} task states"
            )));
        }
        let field = |name: &str| status.get(name).copied().unwrap_or(0).max(0) as u64;
        let mut census = Census {
            job_id: job,
            total: field("total"),
            counters: Counters::of_status(&status),
            states: Counters::default(),
            known,
            unreadable: 0,
            expected_in: PerStage::default(),
            samples: Default::default(),
        };
        for pair in states.chunks(2) {
            let [state, tasks] = pair else {
                return Err(corrupt("an odd list of state counts".into()));
            };
            let tasks: u64 = tasks
                .parse()
                .map_err(|_| corrupt(format!("count {tasks:?}")))?;
            census.count(state, tasks);
        }
        census.expected_in.fetch += census.total.saturating_sub(known);
        for pair in listed.chunks(2) {
            if let [level, task] = pair {
                let level: usize = level
                    .parse()
                    .map_err(|_| corrupt(format!("level {level:?}")))?;
                let task =
                    Uuid::parse_str(task).map_err(|_| corrupt(format!("task id {task:?}")))?;
                census.samples[level.min(2)].push(task);
            }
        }
        Ok(Some(census))
    }

    fn count(&mut self, state: &str, tasks: u64) {
        match state.parse::<u64>() {
            Ok(state) if self.states.add_state(state, tasks) => {
                if state < 3 {
                    self.expected_in.add(state as usize, tasks);
                }
            }
            _ => self.unreadable += tasks,
        }
    }

    /// Where the job's counters disagree with its task states, one line each (empty when
    /// they agree).
    pub fn disagreements(&self) -> Vec<String> {
        let mut out: Vec<String> = COUNTERS
            .iter()
            .map(|&name| (name, self.counters.get(name), self.states.get(name)))
            .filter(|(_, counter, states)| counter != states)
            .map(|(name, counter, states)| {
                format!("{name} is {counter} but {states} task states say so")
            })
            .collect();
        if self.known > self.total {
            out.push(format!(
                "{} tasks have a state but the total is {}",
                self.known, self.total
            ));
        }
        if self.unreadable > 0 {
            out.push(format!("{} task states are unreadable", self.unreadable));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(known: u64, states: &[(&str, u64)], status: &[(&str, i64)]) -> Raw {
        let states = states
            .iter()
            .flat_map(|(s, n)| [s.to_string(), n.to_string()])
            .collect();
        let status = status.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        (known, known, states, Vec::new(), status)
    }

    fn census(known: u64, states: &[(&str, u64)], status: &[(&str, i64)]) -> Census {
        Census::from_raw(Uuid::nil(), raw(known, states, status), "k")
            .unwrap()
            .unwrap()
    }

    #[test]
    fn states_imply_the_counters_state_lua_keeps() {
        // 3 aggregated, 2 processed, 1 fetched and retrying, 1 queued and dead (a fetch
        // that failed for good), 1 fetched and deferred, 1 replayed back to queued.
        let states = [
            ("3", 3),
            ("2", 2),
            ("11", 1),
            ("20", 1),
            ("31", 1),
            ("0", 1),
        ];
        let status = [
            ("total", 12),
            ("fetched", 7),
            ("processed", 5),
            ("aggregated", 3),
            ("retrying", 1),
            ("deferred", 1),
            ("dead", 1),
        ];
        let c = census(9, &states, &status);
        assert_eq!(c.states, c.counters);
        assert!(c.disagreements().is_empty(), "{:?}", c.disagreements());
        // 3 never marked + 1 replayed in fetch, 2 processed in results.
        assert_eq!(
            c.expected_in,
            PerStage {
                fetch: 4,
                process: 0,
                results: 2
            }
        );
    }

    #[test]
    fn disagreements_name_each_counter_and_impossible_states() {
        let c = census(
            4,
            &[("3", 2), ("99", 1), ("x", 1)],
            &[
                ("total", 3),
                ("fetched", 2),
                ("processed", 2),
                ("aggregated", 1),
            ],
        );
        assert_eq!(c.unreadable, 2);
        assert_eq!(
            c.disagreements(),
            [
                "aggregated is 1 but 2 task states say so",
                "4 tasks have a state but the total is 3",
                "2 task states are unreadable",
            ]
        );
    }

    #[test]
    fn an_unknown_job_is_none_and_a_short_scan_is_an_error() {
        assert_eq!(
            Census::from_raw(Uuid::nil(), raw(0, &[], &[]), "k").unwrap(),
            None
        );
        let mut short = raw(2, &[("3", 1)], &[("total", 2)]);
        short.1 = 1;
        assert!(Census::from_raw(Uuid::nil(), short, "k").is_err());
    }
}
