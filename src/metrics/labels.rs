//! Bounded label sets: a label value (a tool kind, an agent name) becomes a small index without
//! a lock or an allocation on the hot path, and a client cannot grow the number of series.

use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The value every label takes past its set's cap (and the literal value `other` itself, so it
/// never names two series).
pub const OTHER: &str = "other";

/// Label values numbered `0..len` in order of first sight (the presets first); every value past
/// the cap is [`OTHER`], numbered [`LabelSet::other`].
///
/// Insert-only: each value's name is written once, then published in an open-addressing table
/// of indices that readers probe with atomic loads. Only the first sight of a new value (at
/// most `cap` times in the process's life) takes the insertion mutex and allocates its name.
#[derive(Debug)]
pub(crate) struct LabelSet {
    /// Value index + 1 at each slot (0: empty); at most half full, so a probe ends.
    slots: Box<[AtomicU16]>,
    /// The names by index.
    names: Box<[OnceLock<Box<str>>]>,
    /// Values numbered so far.
    len: AtomicUsize,
    insert: Mutex<()>,
}

/// FNV-1a: a few cycles for a short name, and no allocation.
fn hash(s: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as usize
}

impl LabelSet {
    /// A set holding `presets` (always present, in that order) and room for `extra` more.
    pub(crate) fn new(presets: &[&str], extra: usize) -> LabelSet {
        let cap = presets.len() + extra;
        debug_assert!(cap < usize::from(u16::MAX) / 2);
        let set = LabelSet {
            slots: (0..(2 * cap).next_power_of_two().max(2))
                .map(|_| AtomicU16::new(0))
                .collect(),
            names: (0..cap).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
            insert: Mutex::new(()),
        };
        for p in presets {
            set.index(p);
        }
        set
    }

    /// The most values with a name of their own.
    pub(crate) fn cap(&self) -> usize {
        self.names.len()
    }

    /// The index of [`OTHER`].
    pub(crate) fn other(&self) -> usize {
        self.cap()
    }

    /// Indices run `0..=other()`.
    pub(crate) fn dim(&self) -> usize {
        self.cap() + 1
    }

    /// The index of `value`: its own when it has or can get one, else [`LabelSet::other`].
    pub(crate) fn index(&self, value: &str) -> usize {
        if let Some(i) = self.find(value) {
            return i;
        }
        if value == OTHER {
            return self.other();
        }
        if self.len.load(Ordering::Acquire) >= self.cap() {
            // The set filled up while `find` looked: the last value added may be this one, and
            // the length (stored after the slot) now guarantees a second look sees its slot.
            return self.find(value).unwrap_or_else(|| self.other());
        }
        self.add(value)
    }

    /// The name of index `i` (`None` for a slot not yet given out).
    pub(crate) fn name(&self, i: usize) -> Option<&str> {
        if i == self.other() {
            return Some(OTHER);
        }
        self.names.get(i).and_then(OnceLock::get).map(|n| &**n)
    }

    fn find(&self, value: &str) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut at = hash(value) & mask;
        for _ in 0..self.slots.len() {
            let v = self.slots[at].load(Ordering::Acquire);
            if v == 0 {
                return None;
            }
            let i = usize::from(v - 1);
            if self.name(i) == Some(value) {
                return Some(i);
            }
            at = (at + 1) & mask;
        }
        None
    }

    fn add(&self, value: &str) -> usize {
        let Ok(_guard) = self.insert.lock() else {
            return self.other();
        };
        // Another thread may have added it meanwhile, or taken the last place.
        if let Some(i) = self.find(value) {
            return i;
        }
        let i = self.len.load(Ordering::Acquire);
        if i >= self.cap() || self.names[i].set(value.into()).is_err() {
            return self.other();
        }
        let mask = self.slots.len() - 1;
        let mut at = hash(value) & mask;
        // At most half the slots are taken, so an empty one comes.
        while self.slots[at].load(Ordering::Acquire) != 0 {
            at = (at + 1) & mask;
        }
        // The name is set before its index is published, so a reader that finds the index
        // finds the name.
        self.slots[at].store((i + 1) as u16, Ordering::Release);
        self.len.store(i + 1, Ordering::Release);
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_past_the_cap_are_other_and_presets_always_have_their_own() {
        let s = LabelSet::new(&["a", "b"], 3);
        assert_eq!((s.index("a"), s.index("b")), (0, 1));
        assert_eq!(s.index("c"), 2);
        assert_eq!(s.index("d"), 3);
        assert_eq!(s.index("c"), 2, "the same value keeps its index");
        assert_eq!(s.index("e"), 4);
        // Full: new values are `other`; the old ones keep theirs.
        assert_eq!(s.index("f"), s.other());
        assert_eq!(s.index("g"), s.other());
        assert_eq!((s.index("a"), s.index("e")), (0, 4));
        assert_eq!(s.name(4), Some("e"));
        assert_eq!(s.name(s.other()), Some(OTHER));
        // A value spelled `other` is the overflow series, never a second one named alike.
        let t = LabelSet::new(&[], 4);
        assert_eq!(t.index(OTHER), t.other());
        assert_eq!(t.name(0), None);
    }

    #[test]
    fn threads_adding_at_once_get_one_index_per_value() {
        let s = LabelSet::new(&[], 40);
        let got: Vec<Vec<usize>> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    sc.spawn(|| {
                        (0..50)
                            .map(|v| s.index(&format!("k{v}")))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(got.windows(2).all(|w| w[0] == w[1]), "{got:?}");
        let own: std::collections::BTreeSet<_> =
            got[0].iter().filter(|i| **i != s.other()).collect();
        assert_eq!(own.len(), 40);
        assert_eq!(got[0].iter().filter(|i| **i == s.other()).count(), 10);
    }
}
