//! `rules`: an ordered list of `when` → action; the first rule whose `when` holds answers.
//! A rule without `when` always matches, so it serves as the fallback.
//!
//! Matching a big request costs as much as its rules read of it: a thousand `regex` or
//! `contains` tests over a 4 MiB field is a second of CPU. Like every declarative answer to a
//! big request, it is worked out off the network threads ([`super::heavy`]).

use prost_reflect::DynamicMessage;
use tonic::metadata::MetadataMap;

use super::declarative::Action;
use crate::matcher::Condition;

#[derive(Debug)]
pub struct Rule {
    pub when: Option<Condition>,
    pub action: Action,
}

/// The index of the first matching rule.
pub fn pick(rules: &[Rule], req: &DynamicMessage, metadata: &MetadataMap) -> Option<usize> {
    rules
        .iter()
        .position(|r| r.when.as_ref().is_none_or(|c| c.matches(req, metadata)))
}
