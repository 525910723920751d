//! The wave planner: which devices go in which wave, deterministically.
//!
//! Devices are ordered by a seeded shuffle (ChaCha8, so the order is the same on
//! every machine and version of `rand`), then stably moved so that online,
//! healthy devices come first: canaries are the devices most likely to tell the
//! truth about a release. Waves are cut from that order at the cumulative sizes
//! of the strategy's steps; empty waves are dropped.

use crate::strategy::Strategy;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use uuid::Uuid;

/// A device as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: Uuid,
    pub online: bool,
    pub healthy: bool,
}

impl Candidate {
    fn preference(&self) -> u8 {
        match (self.online, self.healthy) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        }
    }
}

/// Planned waves: `waves[i]` lists the devices of wave `i` in release order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    pub waves: Vec<Vec<Uuid>>,
    /// Whether the steps reach every candidate: the last wave leaves none of
    /// them on the previous version (no baseline for a relative check then).
    pub covers_target: bool,
}

impl Plan {
    pub fn device_count(&self) -> usize {
        self.waves.iter().map(Vec::len).sum()
    }
}

/// Why a targeted device is left out of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Exclusion {
    /// It already runs the release's version.
    AlreadyOnVersion,
    /// It has unfinished work in another active rollout.
    Busy,
    /// Its `device_type` is not one the release is compatible with.
    Incompatible,
}

/// What eligibility needs to know about a targeted device.
#[derive(Debug, Clone, Copy)]
pub struct Targeted<'a> {
    pub current_version: Option<&'a str>,
    pub device_type: Option<&'a str>,
    pub busy: bool,
}

/// Whether a targeted device takes part in a rollout of `version` (compatible
/// with `compatible` device types; empty: any), and if not, why.
pub fn exclusion(d: Targeted<'_>, version: &str, compatible: &[String]) -> Option<Exclusion> {
    if d.current_version == Some(version) {
        Some(Exclusion::AlreadyOnVersion)
    } else if d.busy {
        Some(Exclusion::Busy)
    } else if !compatible.is_empty() && !d.device_type.is_some_and(|t| compatible.iter().any(|c| c == t)) {
        Some(Exclusion::Incompatible)
    } else {
        None
    }
}

/// Counts of the devices left out, by reason: the explanation of a rollout
/// that would reach no device.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Exclusions {
    pub targeted: u64,
    pub already_on_version: u64,
    pub busy: u64,
    pub incompatible: u64,
}

impl Exclusions {
    pub fn count(&mut self, e: Option<Exclusion>) {
        self.targeted += 1;
        match e {
            Some(Exclusion::AlreadyOnVersion) => self.already_on_version += 1,
            Some(Exclusion::Busy) => self.busy += 1,
            Some(Exclusion::Incompatible) => self.incompatible += 1,
            None => {}
        }
    }

    /// `"no eligible device: 5 targeted; 3 already on 2.0.0, 2 busy in another active rollout"`.
    pub fn explain(&self, version: &str) -> String {
        if self.targeted == 0 {
            return "no eligible device: the target matches no device".into();
        }
        let mut why = Vec::new();
        if self.already_on_version > 0 {
            why.push(format!("{} already on {version}", self.already_on_version));
        }
        if self.busy > 0 {
            why.push(format!("{} busy in another active rollout", self.busy));
        }
        if self.incompatible > 0 {
            why.push(format!("{} of a device type the release is not compatible with", self.incompatible));
        }
        format!("no eligible device: {} targeted; {}", self.targeted, why.join(", "))
    }
}

/// Plans the waves of a rollout over `candidates` (the eligible devices).
pub fn plan(mut candidates: Vec<Candidate>, strategy: &Strategy) -> Plan {
    // Independent of the caller's order: sort, then shuffle with the seed.
    candidates.sort_unstable_by_key(|c| c.id);
    candidates.dedup_by_key(|c| c.id);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(strategy.seed);
    candidates.shuffle(&mut rng);
    candidates.sort_by_key(Candidate::preference);

    let total = candidates.len() as u64;
    let mut waves = Vec::with_capacity(strategy.steps.len());
    let mut done = 0u64;
    for step in &strategy.steps {
        let upto = step.cumulative(total).max(done);
        if upto > done {
            waves.push(candidates[done as usize..upto as usize].iter().map(|c| c.id).collect());
            done = upto;
        }
    }
    Plan { waves, covers_target: done == total }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::{Preset, StrategySpec};
    use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, proptest, Strategy as _};

    fn fleet(n: u128, offline_every: u128) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: Uuid::from_u128(i + 1),
                online: offline_every == 0 || i % offline_every != 0,
                healthy: true,
            })
            .collect()
    }

    fn custom(steps: &str, seed: u64) -> Strategy {
        let spec: StrategySpec = serde_json::from_str(&format!(r#"{{"steps":{steps},"seed":{seed}}}"#)).unwrap();
        spec.resolve(0).unwrap()
    }

    #[test]
    fn a_plan_covers_its_target_when_its_steps_reach_every_candidate() {
        let covers = |steps: &str, n: u128| plan(fleet(n, 0), &custom(steps, 1)).covers_target;
        assert!(covers(r#"[1,"100%"]"#, 20));
        assert!(covers("[1,20]", 20), "a last count of the target's size");
        assert!(covers("[1,50]", 20), "or more");
        assert!(!covers("[1,5]", 20), "15 devices stay on the previous version");
        assert!(!covers(r#"[1,"50%"]"#, 20));
        assert!(covers(r#"[1,"10%","100%"]"#, 1), "one device: its only wave is everyone");
        assert!(!covers("[1]", 20), "a canary alone");
    }

    #[test]
    fn canary_then_ten_percent_then_all() {
        let p = plan(fleet(1000, 0), &custom(r#"[1,"10%","100%"]"#, 3));
        assert_eq!(p.waves.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 99, 900]);
    }

    #[test]
    fn presets() {
        let blue = StrategySpec::preset(Preset::Blue).resolve(1).unwrap();
        assert_eq!(plan(fleet(10, 0), &blue).waves, vec![plan(fleet(10, 0), &blue).waves[0].clone()]);
        assert_eq!(plan(fleet(10, 0), &blue).device_count(), 2);
        let canary = StrategySpec::preset(Preset::Canary).resolve(1).unwrap();
        assert_eq!(plan(fleet(10, 0), &canary).device_count(), 1);
        assert_eq!(plan(vec![], &canary).waves.len(), 0);
    }

    #[test]
    fn canaries_prefer_online_healthy_devices() {
        let mut f = fleet(50, 0);
        for c in f.iter_mut().take(49) {
            c.online = false;
        }
        let only_good = f[49].id;
        let p = plan(f, &custom("[1,\"100%\"]", 9));
        assert_eq!(p.waves[0], vec![only_good]);
    }

    #[test]
    fn eligibility_names_why_a_device_is_left_out() {
        let d = |v: Option<&'static str>, t: Option<&'static str>, busy| Targeted {
            current_version: v,
            device_type: t,
            busy,
        };
        let esp = vec!["esp32".to_string()];
        assert_eq!(exclusion(d(Some("1.0"), Some("esp32"), false), "2.0", &esp), None);
        assert_eq!(exclusion(d(Some("2.0"), Some("esp32"), true), "2.0", &esp), Some(Exclusion::AlreadyOnVersion));
        assert_eq!(exclusion(d(None, Some("esp32"), true), "2.0", &esp), Some(Exclusion::Busy));
        assert_eq!(exclusion(d(None, Some("rpi"), false), "2.0", &esp), Some(Exclusion::Incompatible));
        assert_eq!(exclusion(d(None, None, false), "2.0", &esp), Some(Exclusion::Incompatible));
        assert_eq!(exclusion(d(None, None, false), "2.0", &[]), None);
        let mut x = Exclusions::default();
        for e in [Some(Exclusion::AlreadyOnVersion), Some(Exclusion::Busy), Some(Exclusion::Busy)] {
            x.count(e);
        }
        assert_eq!(
            x.explain("2.0"),
            "no eligible device: 3 targeted; 1 already on 2.0, 2 busy in another active rollout"
        );
        assert!(Exclusions::default().explain("2.0").contains("matches no device"));
    }

    #[test]
    fn same_seed_same_plan_different_seed_different_plan() {
        let a = plan(fleet(200, 3), &custom(r#"[5,"100%"]"#, 42));
        let mut shuffled = fleet(200, 3);
        shuffled.reverse();
        let b = plan(shuffled, &custom(r#"[5,"100%"]"#, 42));
        assert_eq!(a, b);
        let c = plan(fleet(200, 3), &custom(r#"[5,"100%"]"#, 43));
        assert_ne!(a, c);
    }

    proptest! {
        #[test]
        fn every_device_at_most_once_and_waves_nonempty(
            n in 0u128..300,
            steps in proptest::collection::vec(prop_oneof![(1u64..50).prop_map(|c| c.to_string()), (1u32..=100).prop_map(|p| format!("\"{p}%\""))], 1..6),
            seed in any::<u64>(),
        ) {
            let s = custom(&format!("[{}]", steps.join(",")), seed);
            let p = plan(fleet(n, 7), &s);
            let mut all: Vec<Uuid> = p.waves.iter().flatten().copied().collect();
            let count = all.len();
            all.sort();
            all.dedup();
            prop_assert_eq!(all.len(), count);
            prop_assert!(p.waves.iter().all(|w| !w.is_empty()));
            prop_assert!(p.waves.len() <= s.steps.len());
            let max_cover = s.steps.iter().map(|st| st.cumulative(n as u64)).max().unwrap_or(0);
            prop_assert_eq!(count as u64, max_cover);
        }
    }
}
