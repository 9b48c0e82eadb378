//! Parsed GraphQL documents, cached by query text: a client repeating a
//! query with new variables (a paging walk with a new cursor each time) pays
//! for the parse once. Bounded by bytes; a query that does not parse is not
//! kept (async-graphql parses it again to report the error).

use std::sync::Arc;

use async_graphql::parser::types::ExecutableDocument;
use moka::sync::Cache;

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

    /// The document of `query`, parsed at most once while it stays cached.
    pub fn parse(&self, query: &str) -> Option<Arc<ExecutableDocument>> {
        if let Some(doc) = self.cache.get(query) {
            return Some(doc);
        }
        let doc = Arc::new(async_graphql::parser::parse_query(query).ok()?);
        self.cache.insert(query.into(), doc.clone());
        Some(doc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_is_parsed_once_and_garbage_is_not_kept() {
        let docs = Documents::new(1 << 20);
        let a = docs
            .parse("{ userVisits(activityId: \"1\") { totalCount } }")
            .unwrap();
        let b = docs
            .parse("{ userVisits(activityId: \"1\") { totalCount } }")
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(docs.parse("{ userVisits(").is_none());
        docs.cache.run_pending_tasks();
        assert_eq!(docs.cache.entry_count(), 1);
    }
}
