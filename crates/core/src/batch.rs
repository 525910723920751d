//! Batches within a wave: how a wave's devices are cut into the groups that are
//! released together (`Strategy::batch_size`), and the pause between two groups
//! (`Strategy::batch_delay_secs`).
//!
//! The rollout engine releases "at most `batch_size` ready devices, then waits
//! `batch_delay_secs`" one decision at a time; callers that know a wave's
//! devices up front — `otafleet flash`, which creates one FlashJob per batch —
//! cut the wave here with the same numbers. `batch_size: 0` means the whole
//! wave at once, as in the engine.

use crate::strategy::Strategy;
use std::ops::Range;
use std::time::Duration;

/// Index ranges of the batches of a wave of `len` devices, `batch_size` at a
/// time (the last batch may be smaller; `0` is one batch of the whole wave).
/// An empty wave has no batches.
pub fn ranges(len: usize, batch_size: u64) -> Vec<Range<usize>> {
    if len == 0 {
        return Vec::new();
    }
    let size = usize::try_from(batch_size).unwrap_or(usize::MAX);
    let size = if size == 0 { len } else { size };
    (0..len).step_by(size).map(|start| start..start.saturating_add(size).min(len)).collect()
}

/// Number of batches of a wave of `len` devices.
pub fn count(len: u64, batch_size: u64) -> u64 {
    match (len, batch_size) {
        (0, _) => 0,
        (_, 0) => 1,
        (n, b) => n.div_ceil(b),
    }
}

/// The wave `items` cut into the strategy's batches, in order.
pub fn split<'a, T>(items: &'a [T], strategy: &Strategy) -> Vec<&'a [T]> {
    ranges(items.len(), strategy.batch_size).into_iter().map(|r| &items[r]).collect()
}

/// The pause between two batches of one wave.
pub fn delay(strategy: &Strategy) -> Duration {
    Duration::from_secs(strategy.batch_delay_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::{Preset, StrategySpec};
    use proptest::prelude::{prop_assert, prop_assert_eq, proptest};

    fn strategy(batch_size: u64, batch_delay_secs: u64) -> Strategy {
        StrategySpec {
            preset: Some(Preset::Green),
            batch_size: Some(batch_size),
            batch_delay_secs: Some(batch_delay_secs),
            ..Default::default()
        }
        .resolve(0)
        .unwrap()
    }

    #[test]
    fn five_devices_in_batches_of_two() {
        assert_eq!(ranges(5, 2), vec![0..2, 2..4, 4..5]);
        let items = ["a", "b", "c", "d", "e"];
        let s = strategy(2, 60);
        assert_eq!(split(&items, &s), vec![&items[0..2], &items[2..4], &items[4..5]]);
        assert_eq!(count(5, 2), 3);
        assert_eq!(delay(&s), Duration::from_secs(60));
    }

    #[test]
    fn zero_is_the_whole_wave_and_empty_waves_have_no_batches() {
        assert_eq!(ranges(7, 0), vec![0..7]);
        assert_eq!(count(7, 0), 1);
        assert_eq!(ranges(0, 3), Vec::<Range<usize>>::new());
        assert_eq!(count(0, 3), 0);
        assert_eq!(ranges(3, u64::MAX), vec![0..3]);
        assert_eq!(count(3, u64::MAX), 1);
    }

    proptest! {
        #[test]
        fn batches_cover_the_wave_in_order(len in 0usize..500, size in 0u64..40) {
            let r = ranges(len, size);
            prop_assert_eq!(r.len() as u64, count(len as u64, size));
            let flat: Vec<usize> = r.iter().flat_map(|r| r.clone()).collect();
            prop_assert_eq!(flat, (0..len).collect::<Vec<_>>());
            for b in &r {
                prop_assert!(!b.is_empty());
                prop_assert!(size == 0 || b.len() as u64 <= size);
            }
            // Every batch but the last is full.
            if size > 0 && r.len() > 1 {
                prop_assert!(r[..r.len() - 1].iter().all(|b| b.len() as u64 == size));
            }
        }
    }
}
