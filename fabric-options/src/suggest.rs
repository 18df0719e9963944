//! "Did you mean" suggestions for misspelt names.

/// The accepted name closest to `input`, if it is close enough to be a
/// plausible misspelling (Jaro-Winkler similarity of at least 0.8, the
/// threshold darling uses).
///
/// ```
/// use fabric_options::did_you_mean;
///
/// assert_eq!(did_you_mean("precison", ["precision", "devices"]), Some("precision"));
/// assert_eq!(did_you_mean("zzz", ["precision", "devices"]), None);
/// ```
pub fn did_you_mean<'a>(
    input: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let input = input.to_lowercase();
    candidates
        .into_iter()
        .map(|candidate| (strsim::jaro_winkler(&input, candidate), candidate))
        .filter(|(score, _)| *score >= 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, candidate)| candidate)
}
