//! `rules`: an ordered list of `when` → action; the first rule whose `when` holds answers.
//! A rule without `when` always matches, so it serves as the fallback.

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
