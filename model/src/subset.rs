//! Which nodes a load balancer targets when it cannot hold them all: a
//! subset per zone, chosen by rendezvous (highest random weight) hashing of
//! node and Service. Every Service draws its own subset, so together they
//! still spread over every node; and one node added or removed changes at
//! most one member of a Service's subset in that zone (the newcomer enters
//! only by beating the weakest member; a leaving member is replaced by the
//! strongest outsider).

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// The weight of `node` for `service`: the first 8 bytes of
/// SHA-256(service NUL node), stable across processes and releases.
#[must_use]
pub fn weight(service: &str, node: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(service.as_bytes());
    h.update([0u8]);
    h.update(node.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Of `nodes` (name, zone), at most `per_zone` in each zone: all of a zone
/// that has no more, else the `per_zone` with the highest weight for
/// `service`. Nodes without a zone count as one zone of their own. The
/// result is sorted by node name.
#[must_use]
pub fn subset<'a>(
    nodes: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
    service: &str,
    per_zone: usize,
) -> Vec<&'a str> {
    let mut zones: BTreeMap<Option<&str>, Vec<&str>> = BTreeMap::new();
    for (node, zone) in nodes {
        zones.entry(zone).or_default().push(node);
    }
    let mut chosen: Vec<&str> = zones
        .into_values()
        .flat_map(|mut members| {
            if members.len() > per_zone {
                members.sort_by_key(|n| std::cmp::Reverse((weight(service, n), *n)));
                members.truncate(per_zone);
            }
            members
        })
        .collect();
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize, zones: &[&'static str]) -> Vec<(String, &'static str)> {
        (0..n)
            .map(|i| (format!("node-{i:04}"), zones[i % zones.len()]))
            .collect()
    }

    fn pick(all: &[(String, &'static str)], service: &str, per_zone: usize) -> Vec<String> {
        subset(
            all.iter().map(|(n, z)| (n.as_str(), Some(*z))),
            service,
            per_zone,
        )
        .into_iter()
        .map(str::to_owned)
        .collect()
    }

    #[test]
    fn small_zones_are_kept_whole_and_large_ones_capped() {
        let all = nodes(10, &["a", "b"]);
        assert_eq!(pick(&all, "ns/web", 5).len(), 10);
        let capped = pick(&all, "ns/web", 3);
        assert_eq!(capped.len(), 6);
        for zone in ["a", "b"] {
            let n = all
                .iter()
                .filter(|(n, z)| *z == zone && capped.contains(n))
                .count();
            assert_eq!(n, 3, "zone {zone}");
        }
    }

    #[test]
    fn one_node_added_or_removed_moves_at_most_one_member() {
        let all = nodes(1000, &["a", "b", "c"]);
        let before = pick(&all, "ns/web", 125);
        assert_eq!(before.len(), 375);
        for i in 0..50 {
            let mut grown = all.clone();
            grown.push((format!("new-{i}"), ["a", "b", "c"][i % 3]));
            let after = pick(&grown, "ns/web", 125);
            let moved = before.iter().filter(|n| !after.contains(n)).count();
            assert!(moved <= 1, "added new-{i}: {moved} left");
            let mut shrunk = all.clone();
            shrunk.remove(i * 7);
            let after = pick(&shrunk, "ns/web", 125);
            let gone = before.iter().filter(|n| !after.contains(n)).count();
            assert!(gone <= 1, "removed node {}: {gone} left", i * 7);
        }
    }

    #[test]
    fn services_draw_different_subsets_that_cover_the_nodes() {
        let all = nodes(300, &["a", "b"]);
        let mut covered = std::collections::BTreeSet::new();
        let first = pick(&all, "ns/svc-0", 50);
        for s in 0..30 {
            let chosen = pick(&all, &format!("ns/svc-{s}"), 50);
            assert_eq!(chosen.len(), 100);
            covered.extend(chosen);
        }
        assert_ne!(first, pick(&all, "ns/svc-1", 50));
        assert!(covered.len() > 290, "{} of 300 covered", covered.len());
        // Stable: the same inputs, the same subset.
        assert_eq!(first, pick(&all, "ns/svc-0", 50));
    }
}
