//! Parsed GraphQL documents, cached by query text: a client repeating a
//! query with new variables (a paging walk with a new cursor each time) pays
//! for the parse once. Bounded by bytes.
//!
//! Before a document reaches async-graphql it must stay within two bounds
//! that async-graphql does not enforce early enough:
//! - brackets nested at most [`MAX_NESTING`] deep, counted on the text
//!   before parsing: the parser recurses per level, and a list literal a few
//!   thousand deep overflows its stack and aborts the process;
//! - at most [`MAX_SELECTIONS`] selections once fragments are expanded:
//!   validation walks every spread of a fragment again, so a "fragment bomb"
//!   (each fragment spreading the previous one twice) costs 2^n.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::Name;
use async_graphql::parser::types::{ExecutableDocument, Selection, SelectionSet};
use moka::sync::Cache;

/// Deepest nesting of `{`, `[` and `(` in a query's text.
pub const MAX_NESTING: usize = 64;
/// Most selections a document may hold with its fragments expanded.
pub const MAX_SELECTIONS: usize = 5_000;

#[derive(Clone)]
pub struct Documents {
    cache: Cache<Arc<str>, Arc<ExecutableDocument>>,
}

impl Documents {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_bytes)
                // The text, and about as much again for its syntax tree.
                .weigher(|k: &Arc<str>, _| u32::try_from(3 * k.len() + 256).unwrap_or(u32::MAX))
                .build(),
        }
    }

    /// The document of `query`, parsed at most once while it stays cached;
    /// `Ok(None)` when it does not parse (async-graphql then reports the
    /// syntax error); `Err` with the reason when it breaks a bound above.
    pub fn parse(&self, query: &str) -> Result<Option<Arc<ExecutableDocument>>, String> {
        if let Some(doc) = self.cache.get(query) {
            return Ok(Some(doc));
        }
        let depth = nesting(query);
        if depth > MAX_NESTING {
            return Err(format!(
                "the query nests brackets {depth} deep; at most {MAX_NESTING} are accepted"
            ));
        }
        let Ok(doc) = async_graphql::parser::parse_query(query) else {
            return Ok(None);
        };
        let selections = expanded_selections(&doc);
        if selections > MAX_SELECTIONS {
            return Err(format!(
                "the query holds {selections} selections once its fragments are expanded; at most {MAX_SELECTIONS} are accepted"
            ));
        }
        let doc = Arc::new(doc);
        self.cache.insert(query.into(), doc.clone());
        Ok(Some(doc))
    }
}

/// The deepest nesting of brackets outside strings and comments. Only a
/// bound: a query it misjudges is one async-graphql's parser then refuses.
fn nesting(query: &str) -> usize {
    let bytes = query.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                // A block string, up to a `"""` that is not escaped.
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && !matches!(bytes[i], b'"' | b'\n' | b'\r') {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// Selections in every operation and fragment with spreads expanded, each
/// fragment's size counted once (memoised), so this is linear in the text.
fn expanded_selections(doc: &ExecutableDocument) -> usize {
    fn size<'d>(
        set: &'d SelectionSet,
        doc: &'d ExecutableDocument,
        memo: &mut HashMap<&'d Name, usize>,
    ) -> usize {
        set.items
            .iter()
            .map(|s| match &s.node {
                Selection::Field(f) => 1 + size(&f.node.selection_set.node, doc, memo),
                Selection::InlineFragment(i) => size(&i.node.selection_set.node, doc, memo),
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if let Some(&n) = memo.get(name) {
                        return n;
                    }
                    // A cycle counts nothing here; validation refuses it.
                    memo.insert(name, 0);
                    let n = doc
                        .fragments
                        .get(name)
                        .map_or(0, |f| size(&f.node.selection_set.node, doc, memo));
                    memo.insert(name, n);
                    n
                }
            })
            .fold(0, usize::saturating_add)
    }
    let mut memo = HashMap::new();
    let sets = doc
        .operations
        .iter()
        .map(|(_, op)| &op.node.selection_set.node)
        .chain(doc.fragments.values().map(|f| &f.node.selection_set.node));
    sets.fold(0, |n, set| n.saturating_add(size(set, doc, &mut memo)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_parsed_once_and_garbage_is_not_kept() {
        let docs = Documents::new(1 << 20);
        let q = "{ userVisits(activityId: \"1\") { totalCount } }";
        let a = docs.parse(q).unwrap().unwrap();
        let b = docs.parse(q).unwrap().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(docs.parse("{ userVisits(").unwrap().is_none());
        docs.cache.run_pending_tasks();
        assert_eq!(docs.cache.entry_count(), 1);
    }

    #[test]
    fn nesting_is_counted_outside_strings_and_comments() {
        assert_eq!(nesting("{ a(x: [[1]]) { b } }"), 4);
        assert_eq!(nesting(r#"{ a(x: "[[[[\"[[") }"#), 2);
        assert_eq!(nesting("{ a # [[[[\n }"), 1);
        assert_eq!(nesting(r#"{ a(x: """ [[[ \""" [[ """) }"#), 2);
        // Closing brackets in a string do not hide real nesting.
        let hidden = format!(
            "{{ a(x: {}) }}",
            r#"["]]]]]]", "#.repeat(100) + &"]".repeat(100)
        );
        assert_eq!(nesting(&hidden), 102);
    }

    #[test]
    fn deep_literals_and_fragment_bombs_are_refused_before_async_graphql_sees_them() {
        let docs = Documents::new(1 << 20);
        let deep = format!("{{ a(x: {}1{}) }}", "[".repeat(3000), "]".repeat(3000));
        assert!(docs.parse(&deep).unwrap_err().contains("3002 deep"));
        let mut bomb = String::from("{ ...F30 } fragment F0 on Query { a }\n");
        for i in 1..=30 {
            bomb += &format!("fragment F{i} on Query {{ ...F{j} ...F{j} }}\n", j = i - 1);
        }
        let e = docs.parse(&bomb).unwrap_err();
        assert!(e.contains("selections"), "{e}");
        let cycle = "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A a }";
        assert!(
            docs.parse(cycle).unwrap().is_some(),
            "validation refuses it"
        );
    }
}
