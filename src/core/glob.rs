//! Redis's glob patterns (`KEYS`, `SCAN MATCH`, `PSUBSCRIBE`), matched the way the server
//! matches them (`stringmatchlen` in Redis's `util.c`): `*` any run of bytes, `?` one byte,
//! `[abc]`, `[a-z]` and `[^...]` one byte of (or not of) a set, `\x` the byte `x` itself.
//! Byte-wise, case-sensitive. An unclosed `[` takes the rest of the pattern as its set, as
//! Redis does. `tests/adopt` holds this matcher to Redis's own `SCAN MATCH`.

/// True when `s` matches `pattern`.
pub fn matches(pattern: &[u8], s: &[u8]) -> bool {
    // Iterative with one backtrack point (the last `*`): linear in practice, never exponential.
    let (mut p, mut i) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    // Consecutive stars are one star.
                    while p < pattern.len() && pattern[p] == b'*' {
                        p += 1;
                    }
                    if p == pattern.len() {
                        return true;
                    }
                    star = Some((p, i));
                    continue;
                }
                b'?' => {
                    p += 1;
                    i += 1;
                    continue;
                }
                b'[' => {
                    if let Some(next) = class(pattern, p, s[i]) {
                        p = next;
                        i += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() => {
                    if pattern[p + 1] == s[i] {
                        p += 2;
                        i += 1;
                        continue;
                    }
                }
                c => {
                    if c == s[i] {
                        p += 1;
                        i += 1;
                        continue;
                    }
                }
            }
        }
        // Mismatch: let the last star take one more byte, or fail.
        match star {
            Some((sp, si)) => {
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            None => return false,
        }
    }
    // The string is used up: only stars may remain.
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The set starting at `pattern[open] == b'['`: the index after it when `c` is matched by it,
/// else None.
fn class(pattern: &[u8], open: usize, c: u8) -> Option<usize> {
    let mut p = open + 1;
    let not = p < pattern.len() && pattern[p] == b'^';
    if not {
        p += 1;
    }
    let mut hit = false;
    loop {
        if p >= pattern.len() {
            // Unclosed: Redis treats the end of the pattern as the end of the set.
            break;
        }
        match pattern[p] {
            b']' => {
                p += 1;
                break;
            }
            b'\\' if p + 1 < pattern.len() => {
                if pattern[p + 1] == c {
                    hit = true;
                }
                p += 2;
            }
            lo if p + 2 < pattern.len() && pattern[p + 1] == b'-' => {
                let hi = pattern[p + 2];
                let (a, b) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                if a <= c && c <= b {
                    hit = true;
                }
                p += 3;
            }
            x => {
                if x == c {
                    hit = true;
                }
                p += 1;
            }
        }
    }
    (hit != not).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::matches;

    fn m(p: &str, s: &str) -> bool {
        matches(p.as_bytes(), s.as_bytes())
    }

    #[test]
    fn stars_questions_sets_ranges_negation_and_escapes_match_as_redis_matches_them() {
        assert!(m("ext:*", "ext:1"));
        assert!(m("ext:*", "ext:"));
        assert!(!m("ext:*", "ex"));
        assert!(!m("ext:*", "other:ext:1"));
        assert!(m("*", ""));
        assert!(m("*:*:x", "a:b:c:x"));
        assert!(!m("*:*:x", "a:b:c:y"));
        assert!(m("h?llo", "hello") && m("h?llo", "hallo") && !m("h?llo", "hllo"));
        assert!(m("h[ae]llo", "hello") && !m("h[ae]llo", "hillo"));
        assert!(m("h[^e]llo", "hallo") && !m("h[^e]llo", "hello"));
        assert!(m("h[a-b]llo", "hbllo") && !m("h[a-b]llo", "hcllo"));
        assert!(m("h[b-a]llo", "hallo"), "a reversed range is the same range");
        assert!(m("h\\*llo", "h*llo") && !m("h\\*llo", "hello"));
        assert!(m("[\\]]", "]"));
        assert!(m("a[bc", "ab"), "an unclosed set ends at the end of the pattern");
        assert!(m("a**b", "axxb") && m("a**", "a"));
        assert!(!m("", "x") && m("", ""));
        assert!(m("k:[0-9]*", "k:7abc") && !m("k:[0-9]*", "k:x7"));
    }

    #[test]
    fn a_pattern_of_many_stars_against_a_long_string_stays_fast() {
        // A naive backtracking matcher is exponential here.
        let p = "*a*a*a*a*a*a*a*a*a*a*a*b";
        let s = "a".repeat(5000);
        assert!(!m(p, &s));
    }
}
