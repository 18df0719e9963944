//! "Did you mean" suggestions for misspelt names.

use std::fmt;

/// How similar a name must be to be offered at all: darling's Jaro-Winkler
/// threshold. A tiny tolerance keeps a pair that is exactly at the threshold
/// (`"dpp"` and `"ddp"` score 0.8) from being lost to rounding.
const THRESHOLD: f64 = 0.8 - 1e-9;

/// Names scoring within this much of the best Jaro-Winkler similarity are
/// offered too: Jaro-Winkler favours a shared prefix, so a name one edit
/// away with a shorter common prefix can score well below a shorter name.
const MARGIN: f64 = 0.05;

/// At most this many names are offered.
const MAX: usize = 3;

/// The accepted names that `input` is plausibly a misspelling of, best
/// first: see [`did_you_mean`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Suggestions<'a> {
    names: Vec<&'a str>,
}

impl<'a> Suggestions<'a> {
    /// The names, best first (at most three).
    pub fn names(&self) -> &[&'a str] {
        &self.names
    }

    /// The best name, if any.
    pub fn first(&self) -> Option<&'a str> {
        self.names.first().copied()
    }

    /// Whether no name is close enough to be offered.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// "did you mean `ddp` or `dp`?", or nothing when there is no suggestion.
impl fmt::Display for Suggestions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some((last, rest)) = self.names.split_last() else {
            return Ok(());
        };
        f.write_str("did you mean ")?;
        for (i, name) in rest.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "`{name}`")?;
        }
        if !rest.is_empty() {
            f.write_str(" or ")?;
        }
        write!(f, "`{last}`?")
    }
}

/// The accepted names that `input` is plausibly a misspelling of.
///
/// A name is plausible when its Jaro-Winkler similarity to `input` (case
/// ignored) is at least 0.8, the threshold darling uses. Of those, the
/// names offered are the ones with the fewest edits from `input` (counting a
/// swap of two neighbours as one edit) and the ones within a small margin of
/// the best similarity; they are ranked by edits, then by whether they have
/// `input`'s length, then by similarity. So `"dpp"`, one edit from both
/// `ddp` and `dp`, gets both, with `ddp` (the same length, and what a
/// Lightning user almost always means) first.
///
/// ```
/// use fabric_options::did_you_mean;
///
/// let strategies = ["auto", "dp", "ddp", "ddp_spawn", "fsdp"];
/// assert_eq!(did_you_mean("dpp", strategies).names(), ["ddp", "dp"]);
/// assert_eq!(did_you_mean("dpp", strategies).to_string(), "did you mean `ddp` or `dp`?");
/// assert_eq!(did_you_mean("precison", ["precision", "devices"]).first(), Some("precision"));
/// assert!(did_you_mean("zzz", ["precision", "devices"]).is_empty());
/// ```
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Suggestions<'a> {
    let input = input.trim().to_lowercase();
    let input_len = input.chars().count();
    let mut scored: Vec<(&'a str, f64, usize)> = Vec::new();
    for candidate in candidates {
        if scored.iter().any(|(name, _, _)| *name == candidate) {
            continue;
        }
        let similarity = strsim::jaro_winkler(&input, candidate);
        if similarity >= THRESHOLD {
            scored.push((
                candidate,
                similarity,
                strsim::osa_distance(&input, candidate),
            ));
        }
    }
    let (Some(best), Some(fewest)) = (
        scored.iter().map(|s| s.1).max_by(f64::total_cmp),
        scored.iter().map(|s| s.2).min(),
    ) else {
        return Suggestions::default();
    };
    scored.retain(|&(_, similarity, edits)| edits == fewest || similarity >= best - MARGIN);
    // Stable: equal names keep the order they were given in.
    scored.sort_by(|a, b| {
        let other_length = |s: &(&str, f64, usize)| s.0.chars().count() != input_len;
        a.2.cmp(&b.2)
            .then(other_length(a).cmp(&other_length(b)))
            .then(b.1.total_cmp(&a.1))
    });
    Suggestions {
        names: scored.into_iter().take(MAX).map(|s| s.0).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;
    use crate::{Accelerator, Key, Precision, Strategy};

    fn strategies(input: &str) -> Vec<&'static str> {
        did_you_mean(input, Strategy::names()).names().to_vec()
    }

    #[test]
    fn dpp_suggests_ddp_first() {
        assert_eq!(strategies("dpp"), ["ddp", "dp"]);
        assert_eq!(strategies("DPP"), ["ddp", "dp"]);
    }

    #[test]
    fn one_edit_typos_get_the_intended_name_alone() {
        assert_eq!(strategies("ddp_spwan"), ["ddp_spawn"]);
        assert_eq!(strategies("fdsp"), ["fsdp"]);
        assert_eq!(strategies("deepspead"), ["deepspeed"]);
        assert_eq!(did_you_mean("cdua", Accelerator::NAMES).names(), ["cuda"]);
        assert_eq!(
            did_you_mean("bf16-mixd", Precision::names()).names(),
            ["bf16-mixed"]
        );
        assert_eq!(
            did_you_mean("16_mixed", Precision::names()).names(),
            ["16-mixed"]
        );
        let keys = Key::ALL.map(Key::name);
        assert_eq!(did_you_mean("precison", keys).names(), ["precision"]);
        assert_eq!(did_you_mean("num_node", keys).names(), ["num_nodes"]);
        assert_eq!(did_you_mean("device", keys).names(), ["devices"]);
    }

    #[test]
    fn a_prefix_offers_the_close_completions() {
        let single = strategies("single");
        assert!(single.contains(&"single_device"), "{single:?}");
        assert!(single.len() <= 3, "{single:?}");
    }

    #[test]
    fn unrelated_names_get_no_suggestion() {
        assert!(strategies("horovod").is_empty());
        assert!(did_you_mean("quantum", Accelerator::NAMES).is_empty());
        assert!(did_you_mean("", Accelerator::NAMES).is_empty());
        assert!(did_you_mean("batch_size", Key::ALL.map(Key::name)).is_empty());
    }

    #[test]
    fn the_message_lists_every_suggestion() {
        assert_eq!(did_you_mean("zzz", ["a"]).to_string(), "");
        assert_eq!(
            did_you_mean("cdua", ["cuda"]).to_string(),
            "did you mean `cuda`?"
        );
        assert_eq!(
            did_you_mean("dpp", ["dp", "ddp"]).to_string(),
            "did you mean `ddp` or `dp`?"
        );
        assert_eq!(
            did_you_mean("abcd", ["abce", "abcf", "abcg"]).to_string(),
            "did you mean `abce`, `abcf` or `abcg`?"
        );
    }
}
