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
//!
//! A document's weight in the cache is what it keeps alive: its text (the
//! key) and its syntax tree's heap ([`heap_bytes`]). A parsed `{ a a a ... }`
//! holds some 300 bytes for each 2 bytes of text, so weighing by the text
//! alone let a cache of 8 MiB keep hundreds of MiB (a client must not make us hold more than it sends);
//! `tests/document_weight.rs` checks the weight against the heap a parse
//! really keeps, for the worst shapes.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::Name;
use async_graphql::parser::Positioned;
use async_graphql::parser::types::{
    BaseType, Directive, DocumentOperations, ExecutableDocument, FragmentDefinition,
    OperationDefinition, Selection, SelectionSet, Type,
};
use async_graphql_value::{ConstValue, Value};
use moka::sync::Cache;

/// Deepest nesting of `{`, `[` and `(` in a query's text.
pub const MAX_NESTING: usize = 64;
/// Most selections a document may hold with its fragments expanded.
pub const MAX_SELECTIONS: usize = 5_000;

#[derive(Clone)]
pub struct Documents {
    cache: Cache<Arc<str>, (Arc<ExecutableDocument>, u32)>,
}

impl Documents {
    pub fn new(max_bytes: u64) -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_, (_, weight): &(_, u32)| *weight)
                .build(),
        }
    }

    /// What `query`, parsed as `doc`, keeps alive in the cache.
    pub fn weight(query: &str, doc: &ExecutableDocument) -> u32 {
        // The key, the moka entry's own bookkeeping, and the tree with a
        // quarter more: a margin for what the estimate does not see.
        let bytes = query.len() + 256 + heap_bytes(doc) / 4 * 5;
        u32::try_from(bytes).unwrap_or(u32::MAX)
    }

    /// The document of `query`, parsed at most once while it stays cached;
    /// `Ok(None)` when it does not parse (async-graphql then reports the
    /// syntax error); `Err` with the reason when it breaks a bound above.
    pub fn parse(&self, query: &str) -> Result<Option<Arc<ExecutableDocument>>, String> {
        if let Some((doc, _)) = self.cache.get(query) {
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
        let weight = Self::weight(query, &doc);
        let doc = Arc::new(doc);
        self.cache.insert(query.into(), (doc.clone(), weight));
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

/// Heap bytes `doc`'s syntax tree keeps, as malloc holds them: each
/// vector at its capacity (the parser collects without a size hint: 4
/// slots at least, then doubling), each name (`Arc<str>`), string, boxed
/// type and map. `tests/document_weight.rs` checks it against an allocator.
pub fn heap_bytes(doc: &ExecutableDocument) -> usize {
    /// What malloc holds for `n` bytes: a header of 8, rounded up to 16.
    fn chunk(n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (n + 8).div_ceil(16).max(2) * 16
        }
    }
    fn slots<T>(v: &[T]) -> usize {
        if v.is_empty() {
            0
        } else {
            chunk(size_of::<T>() * v.len().next_power_of_two().max(4))
        }
    }
    fn buckets(n: usize) -> usize {
        (n * 8 / 7 + 1).next_power_of_two().max(4)
    }
    /// A hash map of `n` entries of `entry` bytes.
    fn map(n: usize, entry: usize) -> usize {
        chunk(buckets(n) * (entry + 1))
    }
    /// An index map: its entries in a vector, their indices in a table.
    fn index_map(n: usize, entry: usize) -> usize {
        chunk(buckets(n) * 9) + chunk(entry * n.next_power_of_two().max(4))
    }
    fn name(n: &Name) -> usize {
        chunk(16 + n.len())
    }
    fn value(v: &Value) -> usize {
        match v {
            Value::Variable(n) | Value::Enum(n) => name(n),
            Value::String(s) => chunk(s.capacity()),
            Value::Binary(b) => chunk(b.len()),
            Value::List(items) => slots(items) + items.iter().map(value).sum::<usize>(),
            Value::Object(fields) => {
                index_map(fields.len(), size_of::<(u64, Name, Value)>())
                    + fields
                        .iter()
                        .map(|(k, v)| name(k) + value(v))
                        .sum::<usize>()
            }
            Value::Null | Value::Number(_) | Value::Boolean(_) => 0,
        }
    }
    fn const_value(v: &ConstValue) -> usize {
        match v {
            ConstValue::Enum(n) => name(n),
            ConstValue::String(s) => chunk(s.capacity()),
            ConstValue::Binary(b) => chunk(b.len()),
            ConstValue::List(items) => slots(items) + items.iter().map(const_value).sum::<usize>(),
            ConstValue::Object(fields) => {
                index_map(fields.len(), size_of::<(u64, Name, ConstValue)>())
                    + fields
                        .iter()
                        .map(|(k, v)| name(k) + const_value(v))
                        .sum::<usize>()
            }
            ConstValue::Null | ConstValue::Number(_) | ConstValue::Boolean(_) => 0,
        }
    }
    fn arguments(args: &[(Positioned<Name>, Positioned<Value>)]) -> usize {
        slots(args)
            + args
                .iter()
                .map(|(n, v)| name(&n.node) + value(&v.node))
                .sum::<usize>()
    }
    fn directives(ds: &[Positioned<Directive>]) -> usize {
        slots(ds)
            + ds.iter()
                .map(|d| name(&d.node.name.node) + arguments(&d.node.arguments))
                .sum::<usize>()
    }
    fn ty(t: &Type) -> usize {
        match &t.base {
            BaseType::Named(n) => name(n),
            BaseType::List(inner) => chunk(size_of::<Type>()) + ty(inner),
        }
    }
    fn set(s: &SelectionSet) -> usize {
        slots(&s.items)
            + s.items
                .iter()
                .map(|item| match &item.node {
                    Selection::Field(f) => {
                        let f = &f.node;
                        f.alias.as_ref().map_or(0, |a| name(&a.node))
                            + name(&f.name.node)
                            + arguments(&f.arguments)
                            + directives(&f.directives)
                            + set(&f.selection_set.node)
                    }
                    Selection::FragmentSpread(s) => {
                        name(&s.node.fragment_name.node) + directives(&s.node.directives)
                    }
                    Selection::InlineFragment(i) => {
                        i.node
                            .type_condition
                            .as_ref()
                            .map_or(0, |t| name(&t.node.on.node))
                            + directives(&i.node.directives)
                            + set(&i.node.selection_set.node)
                    }
                })
                .sum::<usize>()
    }
    let operations = match &doc.operations {
        DocumentOperations::Single(_) => 0,
        DocumentOperations::Multiple(ops) => map(
            ops.len(),
            size_of::<(Name, Positioned<OperationDefinition>)>(),
        ),
    } + doc
        .operations
        .iter()
        .map(|(n, op)| {
            let op = &op.node;
            n.map_or(0, name)
                + slots(&op.variable_definitions)
                + op.variable_definitions
                    .iter()
                    .map(|v| {
                        let v = &v.node;
                        name(&v.name.node)
                            + ty(&v.var_type.node)
                            + directives(&v.directives)
                            + v.default_value.as_ref().map_or(0, |d| const_value(&d.node))
                    })
                    .sum::<usize>()
                + directives(&op.directives)
                + set(&op.selection_set.node)
        })
        .sum::<usize>();
    let fragments = map(
        doc.fragments.len(),
        size_of::<(Name, Positioned<FragmentDefinition>)>(),
    ) + doc
        .fragments
        .iter()
        .map(|(n, f)| {
            name(n)
                + name(&f.node.type_condition.node.on.node)
                + directives(&f.node.directives)
                + set(&f.node.selection_set.node)
        })
        .sum::<usize>();
    chunk(size_of::<ExecutableDocument>()) + operations + fragments
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
