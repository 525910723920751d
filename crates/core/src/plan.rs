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
}

impl Plan {
    pub fn device_count(&self) -> usize {
        self.waves.iter().map(Vec::len).sum()
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
    Plan { waves }
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
