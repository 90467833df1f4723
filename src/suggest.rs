//! "Did you mean …?" for names a user typed: the closest candidate by edit distance.

/// Names longer than this many bytes get no suggestion: no name is that long, and the distance
/// costs the product of both lengths per candidate (a megabyte-long method name sent to the
/// admin API against googleapis' 13 000 methods kept a core busy for many minutes, and a
/// script's 16 MiB map key took seconds).
const LONGEST_TYPED: usize = 256;

/// The candidate closest to `typed`, if it is close enough to be a plausible typo.
pub fn closest<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    if typed.len() > LONGEST_TYPED {
        return None;
    }
    let typed_len = typed.chars().count();
    let limit = (typed_len / 3).max(2);
    let typed_lower = typed.to_ascii_lowercase();
    let mut best: Option<(usize, &str)> = None;
    for c in candidates {
        // The distance is at least the difference in length: such a candidate cannot pass.
        if c.chars().count().abs_diff(typed_len) > limit {
            continue;
        }
        let d = distance(&typed_lower, &c.to_ascii_lowercase());
        if best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    best.filter(|(d, _)| *d <= limit).map(|(_, c)| c)
}

/// ` (did you mean "X"?)`, or nothing.
pub fn did_you_mean<'a>(typed: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    closest(typed, candidates)
        .map(|c| format!(" (did you mean \"{c}\"?)"))
        .unwrap_or_default()
}

/// Levenshtein distance over chars.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_near_names_only() {
        assert_eq!(
            closest("SayHelo", ["SayHello", "SayHelloAgain"]),
            Some("SayHello")
        );
        assert_eq!(closest("Zzz", ["SayHello"]), None);
    }
}
