//! Deterministic splits by a seeded hash; the rules are stated in the task module's docs
//! ("Splits").

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use super::definition::{FRACTION_TOLERANCE, SplitSpec};

/// What the split needs to know about an example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SplitKey {
    pub(crate) id: String,
    pub(crate) group: Option<String>,
}

/// The seeded order of a key: the first 8 bytes, big-endian, of
/// SHA-256(seed as 8 little-endian bytes ‖ key as UTF-8).
pub(crate) fn split_hash(seed: u64, key: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(seed.to_le_bytes());
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

struct Unit<'a> {
    key: &'a str,
    members: Vec<usize>,
}

/// Assigns every example (by index into `keys`) to calibration, search or test, or to none
/// (examples beyond the fractions or the caps). `official_test` holds the ids of the official
/// test split, all of which the caller has checked are present in `keys`.
pub(crate) fn assign(
    keys: &[SplitKey],
    spec: &SplitSpec,
    official_test: Option<&BTreeSet<String>>,
) -> [Vec<usize>; 3] {
    let in_official_test = |index: &usize| {
        official_test.is_some_and(|ids| keys.get(*index).is_some_and(|key| ids.contains(&key.id)))
    };
    let (test_members, rest): (Vec<usize>, Vec<usize>) =
        (0..keys.len()).partition(in_official_test);
    let units = ordered_units(keys, &rest, spec);
    let n = units.len();
    let [calibration_fraction, search_fraction, test_fraction] = spec.fractions;
    let count = |fraction: f64, left: usize| ((fraction * n as f64).round() as usize).min(left);
    let test_n = if official_test.is_some() {
        0
    } else {
        count(test_fraction, n)
    };
    let search_n = count(search_fraction, n - test_n);
    let left = n - test_n - search_n;
    let calibration_n = if (spec.fractions.iter().sum::<f64>() - 1.0).abs() <= FRACTION_TOLERANCE {
        left
    } else {
        count(calibration_fraction, left)
    };
    let mut units = units.into_iter();
    let calibration: Vec<Unit> = units.by_ref().take(calibration_n).collect();
    let search: Vec<Unit> = units.by_ref().take(search_n).collect();
    let test: Vec<Unit> = match official_test {
        Some(_) => ordered_units(
            keys,
            &test_members,
            &SplitSpec {
                group_by: None,
                ..spec.clone()
            },
        ),
        None => units.take(test_n).collect(),
    };
    let [calibration_cap, search_cap, test_cap] = spec.caps;
    [
        (calibration, calibration_cap),
        (search, search_cap),
        (test, test_cap),
    ]
    .map(|(units, cap)| {
        let mut members = capped(units, cap);
        members.sort_by_cached_key(|&index| {
            let id = keys.get(index).map_or("", |key| key.id.as_str());
            (split_hash(spec.seed, id), id)
        });
        members
    })
}

/// The units formed by the examples `indices`, in hash order of their keys.
fn ordered_units<'a>(keys: &'a [SplitKey], indices: &[usize], spec: &SplitSpec) -> Vec<Unit<'a>> {
    let mut by_key: BTreeMap<&'a str, Vec<usize>> = BTreeMap::new();
    for &index in indices {
        let Some(key) = keys.get(index) else { continue };
        let unit_key = match (&spec.group_by, &key.group) {
            (Some(_), Some(group)) => group.as_str(),
            _ => key.id.as_str(),
        };
        by_key.entry(unit_key).or_default().push(index);
    }
    let mut units: Vec<Unit> = by_key
        .into_iter()
        .map(|(key, members)| Unit { key, members })
        .collect();
    units.sort_by_cached_key(|unit| (split_hash(spec.seed, unit.key), unit.key));
    units
}

fn capped(units: Vec<Unit>, cap: Option<usize>) -> Vec<usize> {
    let cap = cap.unwrap_or(usize::MAX);
    let mut members = Vec::new();
    for unit in units {
        if members.len() + unit.members.len() > cap {
            break;
        }
        members.extend(unit.members);
    }
    members
}
