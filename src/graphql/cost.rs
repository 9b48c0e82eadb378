//! What one request may cost (docs/api.md): the most platform requests a whole
//! GraphQL request can make, and the timeline buckets it can build, read
//! from its document before anything runs, so that no alias, fragment or
//! forged cursor spends the platform's budget past
//! `MAX_PLATFORM_REQUESTS_PER_QUERY`, and no set of timelines builds more
//! than 10,000 buckets.

use std::collections::HashSet;

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, Field, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use async_graphql::{InputType, Name, Value as ConstValue, Variables};
use chrono::{DateTime, Utc};

use super::stats::StatsInterval;
use super::{Resolver, TimeRange, VisitPlans, VisitsArgs};
use crate::paging::ActivityId;
use crate::stats::calendar::{self, Calendar};

/// Selections nested deeper than this are not followed: validation refuses
/// them anyway (async-graphql's recursion limit is 32), and the walk must
/// not overflow the stack on a hostile document.
const MAX_NESTING: usize = 64;

/// The most `timeline` buckets one request may ask for, all its `timeline`
/// fields together.
pub const MAX_TIMELINE_BUCKETS: u64 = crate::stats::calendar::MAX_BUCKETS as u64;

/// What the operation that would run may cost, at worst.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Platform requests of its `userVisits` fields.
    pub platform_requests: u64,
    /// Buckets of its `timeline` fields.
    pub timeline_buckets: u64,
    /// The `userVisits` plans counted: the resolver runs these, not plans
    /// of its own (one plan a field).
    pub visits: VisitPlans,
}

/// The worst case of the operation that would run, counted on every field
/// the executor would run: each distinct (response name, arguments) pair,
/// whether it came plainly, by alias, fragment or inline fragment (GraphQL
/// merges identical fields, so they run once; two different fields under one
/// response name both count). Each `userVisits` is planned as the resolver
/// runs it (the plans are in [`Plan::visits`]); a field that cannot be
/// planned (bad arguments) costs nothing: it fails before any platform request.
pub fn worst_case(
    resolver: &Resolver,
    doc: &ExecutableDocument,
    operation_name: Option<&str>,
    variables: &Variables,
    now: DateTime<Utc>,
) -> Plan {
    let mut visits = VisitPlans::new(now);
    let Some(op) = operation(doc, operation_name) else {
        return Plan {
            platform_requests: 0,
            timeline_buckets: 0,
            visits,
        };
    };
    let mut walk = Walk {
        doc,
        op,
        variables,
        visits: Vec::new(),
        timelines: Vec::new(),
    };
    walk.root(&op.selection_set.node, 0, &mut HashSet::new());
    let platform_requests = if op.ty == OperationType::Query {
        walk.visits
            .iter()
            .map(|(_, args)| field_cost(resolver, &mut visits, args))
            .sum()
    } else {
        0
    };
    let timeline_buckets = walk
        .timelines
        .iter()
        .map(|t| timeline_buckets(resolver, &t.stats, &t.timeline, now))
        .fold(0, u64::saturating_add);
    Plan {
        platform_requests,
        timeline_buckets,
        visits,
    }
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

/// A field's arguments, with variables substituted.
type Args = Vec<(Name, ConstValue)>;

/// A `timeline` field under a `userVisitStats` field, both with their
/// response names and arguments.
#[derive(PartialEq)]
struct Timeline<'d> {
    stats_key: &'d str,
    stats: Args,
    key: &'d str,
    timeline: Args,
}

struct Walk<'d> {
    doc: &'d ExecutableDocument,
    op: &'d OperationDefinition,
    variables: &'d Variables,
    /// Distinct `userVisits` fields, by response name and arguments.
    visits: Vec<(&'d str, Args)>,
    /// Distinct `timeline` fields.
    timelines: Vec<Timeline<'d>>,
}

fn response_key(field: &Field) -> &str {
    field
        .alias
        .as_ref()
        .map_or(field.name.node.as_str(), |a| a.node.as_str())
}

impl<'d> Walk<'d> {
    /// The operation's root fields. `expanded`: fragments already expanded
    /// in this selection set; a second spread adds the same fields again, so
    /// one expansion each is exact (and a fragment cycle or bomb costs nothing).
    fn root(&mut self, set: &'d SelectionSet, depth: usize, expanded: &mut HashSet<&'d Name>) {
        self.each_field(set, depth, expanded, &mut |walk, field, depth| match field
            .name
            .node
            .as_str()
        {
            "userVisits" => {
                let entry = (response_key(field), walk.arguments(field));
                if !walk.visits.contains(&entry) {
                    walk.visits.push(entry);
                }
            }
            "userVisitStats" => {
                let (stats_key, stats) = (response_key(field), walk.arguments(field));
                walk.each_field(
                    &field.selection_set.node,
                    depth + 1,
                    &mut HashSet::new(),
                    &mut |walk, inner, _| {
                        if inner.name.node != "timeline" {
                            return;
                        }
                        let timeline = Timeline {
                            stats_key,
                            stats: stats.clone(),
                            key: response_key(inner),
                            timeline: walk.arguments(inner),
                        };
                        if !walk.timelines.contains(&timeline) {
                            walk.timelines.push(timeline);
                        }
                    },
                );
            }
            _ => {}
        });
    }

    /// Calls `visit` on each field of `set`, through fragments and inline
    /// fragments.
    fn each_field(
        &mut self,
        set: &'d SelectionSet,
        depth: usize,
        expanded: &mut HashSet<&'d Name>,
        visit: &mut dyn FnMut(&mut Self, &'d Field, usize),
    ) {
        if depth > MAX_NESTING {
            return;
        }
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => visit(self, &field.node, depth),
                Selection::FragmentSpread(spread) => {
                    let name = &spread.node.fragment_name.node;
                    if let Some(fragment) = self.doc.fragments.get(name)
                        && expanded.insert(name)
                    {
                        self.each_field(
                            &fragment.node.selection_set.node,
                            depth + 1,
                            expanded,
                            visit,
                        );
                    }
                }
                Selection::InlineFragment(inline) => {
                    self.each_field(&inline.node.selection_set.node, depth + 1, expanded, visit);
                }
            }
        }
    }

    fn arguments(&self, field: &Field) -> Args {
        field
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
            .collect()
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

fn arg<T: InputType>(args: &Args, name: &str) -> Option<T> {
    let value = args.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    T::parse(value).ok()
}

fn field_cost(resolver: &Resolver, plans: &mut VisitPlans, args: &Args) -> u64 {
    let mut plan = || {
        let id = match args.iter().find(|(n, _)| n == "activityId")?.1 {
            ConstValue::String(ref s) => s.clone(),
            ConstValue::Number(ref n) => n.to_string(),
            _ => return None,
        };
        let args = VisitsArgs {
            activity: ActivityId::parse(&id).ok()?,
            range: arg::<Option<TimeRange>>(args, "range")?,
            first: arg::<Option<i32>>(args, "first")?,
            after: arg::<Option<String>>(args, "after")?,
            last: arg::<Option<i32>>(args, "last")?,
            before: arg::<Option<String>>(args, "before")?,
        };
        plans.plan(resolver, args).ok()
    };
    plan().map_or(0, |req| {
        req.worst_case_requests(resolver.fetch_policy.upstream_page_size)
    })
}

/// A `timeline`'s buckets, as its resolver would lay them out; one over
/// the bound when there would be more; none when its arguments are bad (the
/// field fails on its own, building nothing).
fn timeline_buckets(resolver: &Resolver, stats: &Args, timeline: &Args, now: DateTime<Utc>) -> u64 {
    let count = || {
        let range = arg::<Option<TimeRange>>(stats, "range")?;
        let range = crate::paging::resolve_range(
            range.as_ref().map(|r| r.from.0),
            range.as_ref().and_then(|r| r.to.map(|t| t.0)),
            now,
            &resolver.range_policy,
        )
        .ok()?;
        let zone = arg::<Option<String>>(stats, "timeZone")?;
        let zone = calendar::zone(zone.as_deref().unwrap_or("UTC")).ok()?;
        let interval = arg::<StatsInterval>(timeline, "interval")?;
        let buckets = match Calendar::new(interval.into(), zone).bounds(
            range.from().timestamp_millis(),
            range.to().timestamp_millis(),
        ) {
            Ok(bounds) => bounds.len().saturating_sub(1) as u64,
            Err(_) => MAX_TIMELINE_BUCKETS + 1,
        };
        Some(buckets)
    };
    count().unwrap_or(0)
}
