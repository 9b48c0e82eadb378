//! SPEC §2, "What one request may cost": the most platform requests a whole
//! GraphQL request can make, read from its document before anything runs,
//! so that no alias, fragment or forged cursor spends the platform's budget
//! past `MAX_PLATFORM_REQUESTS_PER_QUERY`.

use std::collections::{HashMap, HashSet};

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{InputType, Name, Value as ConstValue, Variables};
use chrono::{DateTime, Utc};

use super::{Resolver, TimeRange};
use crate::paging::ActivityId;

/// Selections nested deeper than this are not followed: validation refuses
/// them anyway (async-graphql's recursion limit is 32), and the walk must
/// not overflow the stack on a hostile document.
const MAX_NESTING: usize = 64;

/// The worst case, in platform requests, of the operation that would run:
/// the sum over the distinct `userVisits` fields it selects (fields with
/// one response name are merged by GraphQL, so they run once), each planned
/// exactly as the resolver plans it. A field that cannot be planned (bad
/// arguments) costs nothing: it fails before any platform request.
pub fn worst_case(
    resolver: &Resolver,
    doc: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
    now: DateTime<Utc>,
) -> u64 {
    let Some(op) = operation(doc, operation_name) else {
        return 0;
    };
    if op.ty != OperationType::Query {
        return 0;
    }
    let mut walk = Walk {
        doc,
        op,
        variables,
        expanded: HashSet::new(),
        fields: HashMap::new(),
    };
    walk.selection_set(&op.selection_set.node, 0);
    walk.fields
        .into_values()
        .map(|args| field_cost(resolver, &args, now))
        .sum()
}

fn operation<'d>(
    doc: &'d ExecutableDocument,
    name: Option<&str>,
) -> Option<&'d OperationDefinition> {
    match (&doc.operations, name) {
        (DocumentOperations::Single(op), _) => Some(&op.node),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name).map(|op| &op.node),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => {
            ops.values().next().map(|op| &op.node)
        }
        _ => None,
    }
}

/// A `userVisits` field's arguments, with variables substituted.
type Args = HashMap<Name, ConstValue>;

struct Walk<'d> {
    doc: &'d ExecutableDocument,
    op: &'d OperationDefinition,
    variables: &'d Variables,
    /// Fragments already expanded: every spread at the root lands in the
    /// same selection set, so one expansion each is exact (and a fragment
    /// cycle or a fragment bomb costs nothing).
    expanded: HashSet<&'d Name>,
    /// By response name (alias or name).
    fields: HashMap<&'d str, Args>,
}

impl<'d> Walk<'d> {
    fn selection_set(&mut self, set: &'d SelectionSet, depth: usize) {
        if depth > MAX_NESTING {
            return;
        }
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) if field.node.name.node == "userVisits" => {
                    let key = field
                        .node
                        .alias
                        .as_ref()
                        .map_or(field.node.name.node.as_str(), |a| a.node.as_str());
                    let args = field
                        .node
                        .arguments
                        .iter()
                        .filter_map(|(name, value)| {
                            let value = value
                                .node
                                .clone()
                                .into_const_with(|var| self.variable(&var))
                                .ok()?;
                            Some((name.node.clone(), value))
                        })
                        .collect();
                    self.fields.insert(key, args);
                }
                Selection::Field(_) => {}
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if let Some(fragment) = self.doc.fragments.get(name)
                        && self.expanded.insert(name)
                    {
                        self.selection_set(&fragment.node.selection_set.node, depth + 1);
                    }
                }
                Selection::InlineFragment(inline) => {
                    self.selection_set(&inline.node.selection_set.node, depth + 1);
                }
            }
        }
    }

    /// A variable's value, or its declared default.
    fn variable(&self, name: &Name) -> Result<ConstValue, ()> {
        if let Some(value) = self.variables.get(name) {
            return Ok(value.clone());
        }
        self.op
            .variable_definitions
            .iter()
            .find(|d| d.node.name.node == *name)
            .and_then(|d| d.node.default_value().cloned())
            .ok_or(())
    }
}

fn field_cost(resolver: &Resolver, args: &Args, now: DateTime<Utc>) -> u64 {
    fn arg<T: InputType>(args: &Args, name: &str) -> Option<T> {
        T::parse(args.get(name).cloned()).ok()
    }
    let plan = || {
        let id = match args.get("activityId")? {
            ConstValue::String(s) => s.clone(),
            ConstValue::Number(n) => n.to_string(),
            _ => return None,
        };
        let activity = ActivityId::parse(&id).ok()?;
        resolver
            .plan(
                activity,
                arg::<Option<TimeRange>>(args, "range")?,
                arg::<Option<i32>>(args, "first")?,
                arg::<Option<String>>(args, "after")?,
                arg::<Option<i32>>(args, "last")?,
                arg::<Option<String>>(args, "before")?,
                now,
            )
            .ok()
    };
    plan().map_or(0, |req| {
        req.worst_case_requests(resolver.fetch_policy.upstream_page_size)
    })
}
