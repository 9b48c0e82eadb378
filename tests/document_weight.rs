//! The document cache weighs a parsed document by what it keeps alive
//! (docs/security.md): for the worst shapes a client can send, the weight is at
//! least the heap the parse really keeps, as this binary's allocator counts
//! it (each allocation as glibc's malloc holds it: 8 bytes of header,
//! rounded up to 16, 32 at least), and at most twice that. Its own binary: the allocator counts
//! every allocation of the process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use visits_gateway::graphql::documents::{Documents, MAX_SELECTIONS};

struct Counting;

thread_local! {
    /// Bytes this thread allocated and has not freed.
    static HELD: Cell<isize> = const { Cell::new(0) };
}

/// What malloc holds for a request of `size` bytes.
fn chunk(size: usize) -> isize {
    ((size + 8).div_ceil(16) * 16).max(32) as isize
}

fn count(delta: isize) {
    let _ = HELD.try_with(|h| h.set(h.get() + delta));
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(chunk(layout.size()));
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(chunk(layout.size()));
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-chunk(layout.size()));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(chunk(new_size) - chunk(layout.size()));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn held() -> isize {
    HELD.with(Cell::get)
}

/// `(weight, heap kept)` of `query` parsed into a fresh cache.
fn measure(query: &str) -> (u32, isize) {
    let docs = Documents::new(1 << 30);
    // The cache's own first allocations are not the document's.
    let _ = docs.parse("{ warmUp }");
    let before = held();
    let doc = docs.parse(query).unwrap().expect("the shape parses");
    let kept = held() - before;
    (Documents::weight(query, &doc), kept)
}

fn repeat(n: usize, f: impl Fn(usize) -> String) -> String {
    (0..n).map(f).collect::<Vec<_>>().join(" ")
}

#[test]
fn a_document_weighs_at_least_the_heap_it_keeps_for_the_worst_shapes() {
    let n = MAX_SELECTIONS - 10;
    let shapes = [
        (
            "tiny selections",
            format!("{{ {} }}", repeat(n, |_| "a".into())),
        ),
        (
            "aliases",
            format!("{{ {} }}", repeat(n, |i| format!("x{i}:a"))),
        ),
        (
            "one long argument",
            format!("{{ a(x: \"{}\") }}", "y".repeat(100_000)),
        ),
        (
            "many arguments",
            format!("{{ a({}) }}", repeat(n, |i| format!("x{i}:1"))),
        ),
        (
            "a long list",
            format!("{{ a(x: [{}]) }}", repeat(20_000, |_| "1".into())),
        ),
        (
            "nested lists",
            format!("{{ a(x: [{}]) }}", repeat(5_000, |_| "[[]]".into())),
        ),
        (
            "an object",
            format!("{{ a(x: {{{}}}) }}", repeat(n, |i| format!("k{i}:1"))),
        ),
        (
            "variables",
            format!(
                "query({}) {{ a }}",
                repeat(n, |i| format!("$v{i}:[[Int!]!]=[[1]]"))
            ),
        ),
        (
            "directives",
            format!("{{ a {} }}", repeat(n, |_| "@i".into())),
        ),
        ("nesting", {
            // As deep as async-graphql's parser goes.
            let deep = format!("{}a{}", "a{".repeat(30), "}".repeat(30));
            format!("{{ {} }}", repeat(n / 31, |_| deep.clone()))
        }),
        (
            "fragments",
            format!(
                "{{ {} }} {}",
                repeat(n / 2, |i| format!("...F{i}")),
                repeat(n / 2, |i| format!("fragment F{i} on Q{{a}}"))
            ),
        ),
        (
            "inline fragments",
            format!("{{ {} }}", repeat(n / 2, |_| "...{a}".into())),
        ),
        ("operations", repeat(n / 2, |i| format!("query Q{i}{{a}}"))),
    ];
    let mut light = Vec::new();
    for (name, query) in &shapes {
        let (weight, kept) = measure(query);
        let ratio = f64::from(weight) / kept as f64;
        println!(
            "{name}: {} bytes of text keep {kept} bytes, weighed {weight} ({ratio:.2})",
            query.len()
        );
        // At least what it keeps; not so much more that the cache is wasted.
        if !(1.0..=2.0).contains(&ratio) {
            light.push(format!("{name}: weighs {weight}, keeps {kept}"));
        }
    }
    assert!(light.is_empty(), "{light:#?}");
}
