//! Where a page's parts lie in its body, found without reading the items,
//! and only as far as reads need them.
//!
//! A page is mostly item strings, and a client is served a few of its items
//! (10 of 100 by default). serde_json would validate every byte of the other
//! 90 on the way past. Here the head of the body is scanned up to the items
//! array; items are then located when a read reaches them, tracking only the
//! structure (strings closed, brackets matched, one top-level object) and
//! jumping over string contents with `memchr`. Each item is read by
//! serde_json when it is served, which checks its syntax and UTF-8 then; the
//! structure of the rest of the body is checked when the scan reaches the
//! array's end.

use std::ops::Range;

/// Why a body is not a page; all of them are the platform's fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAPage {
    /// Not one JSON object with balanced strings and brackets.
    Syntax,
    /// No `pager`, a duplicate key, or `items` that is not an array.
    Shape,
}

/// The head of a page: its `pager`'s extent and its items' index.
#[derive(Debug)]
pub struct Head {
    pub pager: Range<usize>,
    pub items: Items,
}

/// The items located so far, and where the scan resumes.
#[derive(Debug)]
pub struct Items {
    found: Vec<Range<usize>>,
    /// Just after the array's `[` or the last item found; `None` once the
    /// array and the rest of the body have been scanned.
    resume: Option<usize>,
    /// Whether the pager was seen before the items (a second one is an error).
    pager_seen: bool,
}

/// Scans the head of `body`: a top-level object, its `pager` (required) and
/// the start of its `items` (an array; missing = empty). Other keys are
/// skipped. When the pager comes after the items, the items are located too.
pub fn scan(body: &[u8]) -> Result<Head, NotAPage> {
    let mut s = Scanner { b: body, i: 0 };
    s.ws();
    s.expect(b'{')?;
    let mut pager = None;
    let more = s.first_member();
    let Some(items_at) = s.members(more, &mut pager, true)? else {
        return Ok(Head {
            pager: pager.ok_or(NotAPage::Shape)?,
            items: Items {
                found: Vec::new(),
                resume: None,
                pager_seen: true,
            },
        });
    };
    let mut items = Items {
        found: Vec::new(),
        resume: Some(items_at),
        pager_seen: pager.is_some(),
    };
    let pager = match pager {
        Some(pager) => pager,
        None => items.locate_all(body)?.ok_or(NotAPage::Shape)?,
    };
    Ok(Head { pager, items })
}

impl Items {
    /// The items located so far, in order.
    pub fn found(&self) -> &[Range<usize>] {
        &self.found
    }

    /// Whether every item is located and the whole body checked.
    #[cfg(test)]
    pub fn complete(&self) -> bool {
        self.resume.is_none()
    }

    /// Locates items until `want` are known or the array ends; at its end,
    /// the rest of the body is checked.
    pub fn locate(&mut self, body: &[u8], want: usize) -> Result<(), NotAPage> {
        while self.found.len() < want && self.resume.is_some() {
            self.step(body)?;
        }
        // When the last item found is the array's last, finish now: a read
        // of a short page's last item checks the rest of the body too.
        if let Some(at) = self.resume {
            let mut s = Scanner { b: body, i: at };
            s.ws();
            if s.peek() == Ok(b']') {
                self.step(body)?;
            }
        }
        Ok(())
    }

    /// Locates every item; returns a pager found after the array.
    fn locate_all(&mut self, body: &[u8]) -> Result<Option<Range<usize>>, NotAPage> {
        let mut pager = None;
        while self.resume.is_some() {
            pager = self.step(body)?;
        }
        Ok(pager)
    }

    /// One item, or the array's end and the rest of the body (returning a
    /// pager met there). State changes only when the step succeeds.
    fn step(&mut self, body: &[u8]) -> Result<Option<Range<usize>>, NotAPage> {
        let Some(at) = self.resume else {
            return Ok(None);
        };
        let mut s = Scanner { b: body, i: at };
        s.ws();
        if !s.eat(b']') {
            if !self.found.is_empty() {
                s.expect(b',')?;
                s.ws();
            }
            let item = s.value()?;
            // What follows an item says whether the array goes on: anything
            // else (a body cut short, say) is found with the item before it.
            s.ws();
            if !matches!(s.peek(), Ok(b',' | b']')) {
                return Err(NotAPage::Syntax);
            }
            self.found.push(item);
            self.resume = Some(s.i);
            return Ok(None);
        }
        let pager = s.rest_of_page()?;
        if pager.is_some() && self.pager_seen {
            return Err(NotAPage::Shape);
        }
        self.resume = None;
        Ok(pager)
    }
}

enum Key {
    Pager,
    Items,
    Other,
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Result<u8, NotAPage> {
        self.b.get(self.i).copied().ok_or(NotAPage::Syntax)
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        let hit = self.b.get(self.i) == Some(&c);
        self.i += usize::from(hit);
        hit
    }

    fn expect(&mut self, c: u8) -> Result<(), NotAPage> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(NotAPage::Syntax)
        }
    }

    /// After an object's `{`: whether a member follows.
    fn first_member(&mut self) -> bool {
        self.ws();
        !self.eat(b'}')
    }

    /// After a member's value: whether another member follows.
    fn next_member(&mut self) -> Result<bool, NotAPage> {
        self.ws();
        if self.eat(b'}') {
            return Ok(false);
        }
        self.expect(b',')?;
        Ok(true)
    }

    /// After the top-level object: only whitespace may follow.
    fn end(&mut self) -> Result<(), NotAPage> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(NotAPage::Syntax)
        }
    }

    /// The members after `items` and the end of the body; returns the pager's
    /// extent if one is met.
    fn rest_of_page(&mut self) -> Result<Option<Range<usize>>, NotAPage> {
        let mut pager = None;
        let more = self.next_member()?;
        self.members(more, &mut pager, false)?;
        Ok(pager)
    }

    /// The top-level object's members from here (`more`: one follows), noting
    /// the pager in `pager`, up to the `[` of `items` when `items_here`
    /// (returning the position after it), else to the end of the body.
    fn members(
        &mut self,
        mut more: bool,
        pager: &mut Option<Range<usize>>,
        items_here: bool,
    ) -> Result<Option<usize>, NotAPage> {
        while more {
            match self.key()? {
                Key::Pager if pager.is_some() => return Err(NotAPage::Shape),
                Key::Pager => *pager = Some(self.value()?),
                Key::Items if items_here => return self.open_array().map(Some),
                Key::Items => return Err(NotAPage::Shape),
                Key::Other => {
                    self.value()?;
                }
            }
            more = self.next_member()?;
        }
        self.end()?;
        Ok(None)
    }

    /// A string starting at the cursor; returns its contents' extent.
    fn string(&mut self) -> Result<Range<usize>, NotAPage> {
        self.expect(b'"')?;
        let start = self.i;
        loop {
            let at = memchr::memchr2(b'"', b'\\', &self.b[self.i..]).ok_or(NotAPage::Syntax)?;
            self.i += at;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Ok(start..self.i - 1);
            }
            // An escape: skip the backslash and the character it escapes.
            self.i += 2;
            if self.i > self.b.len() {
                return Err(NotAPage::Syntax);
            }
        }
    }

    /// A member's key and its `:`.
    fn key(&mut self) -> Result<Key, NotAPage> {
        self.ws();
        let raw = &self.b[self.string()?];
        let name: std::borrow::Cow<'_, [u8]> = if raw.contains(&b'\\') {
            // An escaped key ("\u0070ager") means what it decodes to.
            let mut quoted = Vec::with_capacity(raw.len() + 2);
            quoted.push(b'"');
            quoted.extend_from_slice(raw);
            quoted.push(b'"');
            let decoded: String = serde_json::from_slice(&quoted).map_err(|_| NotAPage::Syntax)?;
            decoded.into_bytes().into()
        } else {
            raw.into()
        };
        let key = match &*name {
            b"pager" => Key::Pager,
            b"items" => Key::Items,
            _ => Key::Other,
        };
        self.ws();
        self.expect(b':')?;
        self.ws();
        Ok(key)
    }

    /// Any value; returns its extent.
    fn value(&mut self) -> Result<Range<usize>, NotAPage> {
        let start = self.i;
        match self.peek()? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => self.nested()?,
            // A number or literal, made of the characters those may hold
            // (read by serde_json if it is ever needed).
            _ => {
                while let Some(c) = self.b.get(self.i) {
                    if !(c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.')) {
                        break;
                    }
                    self.i += 1;
                }
                if self.i == start {
                    return Err(NotAPage::Syntax);
                }
            }
        }
        Ok(start..self.i)
    }

    /// An object or array, brackets matched by kind, nested at most 128 deep
    /// (a platform item is a flat object; deeper is refused rather than
    /// tracked on the heap for every item).
    fn nested(&mut self) -> Result<(), NotAPage> {
        // One bit per open bracket, innermost lowest: 1 for `{`, 0 for `[`.
        let (mut open, mut depth) = (0u128, 0u32);
        loop {
            match self.peek()? {
                b'"' => {
                    self.string()?;
                    continue;
                }
                c @ (b'{' | b'[') => {
                    if depth == 128 {
                        return Err(NotAPage::Syntax);
                    }
                    open = open << 1 | u128::from(c == b'{');
                    depth += 1;
                }
                c @ (b'}' | b']') => {
                    if open & 1 != u128::from(c == b'}') {
                        return Err(NotAPage::Syntax);
                    }
                    open >>= 1;
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Ok(());
                    }
                }
                _ => {}
            }
            self.i += 1;
        }
    }

    /// The `[` of an array; returns the position after it.
    fn open_array(&mut self) -> Result<usize, NotAPage> {
        if self.peek()? != b'[' {
            return Err(NotAPage::Shape);
        }
        self.i += 1;
        Ok(self.i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value;
    use serde_json::value::RawValue;

    type Layout = (Range<usize>, Vec<Range<usize>>);

    /// The whole layout, every item located.
    fn full(body: &[u8]) -> Result<Layout, NotAPage> {
        let mut head = scan(body)?;
        head.items.locate(body, usize::MAX)?;
        assert!(head.items.complete());
        Ok((head.pager, head.items.found().to_vec()))
    }

    /// What serde_json finds, for comparison: the extents of `pager` and each
    /// item, when it reads the body as a page at all.
    fn serde_layout(body: &[u8]) -> Option<Layout> {
        #[derive(serde::Deserialize)]
        struct Page<'a> {
            #[serde(borrow)]
            pager: &'a RawValue,
            #[serde(default, borrow)]
            items: Vec<&'a RawValue>,
        }
        let text = std::str::from_utf8(body).ok()?;
        let page: Page = serde_json::from_str(text).ok()?;
        let base = body.as_ptr() as usize;
        let at = |r: &RawValue| {
            let s = r.get().as_ptr() as usize - base;
            s..s + r.get().len()
        };
        Some((at(page.pager), page.items.iter().map(|r| at(r)).collect()))
    }

    #[test]
    fn finds_the_pager_and_each_item() {
        let body = br#" {"extra":[1,{"x":"]"}],"pager":{"page":1,"pageSize":2,"total":9},
            "items":[ {"a":"q\"uote}"} , {"b":[1,2,{}]} ]} "#;
        let (pager, items) = full(body).unwrap();
        assert_eq!(Some((pager.clone(), items.clone())), serde_layout(body));
        let text = |r: &Range<usize>| std::str::from_utf8(&body[r.clone()]).unwrap();
        assert_eq!(text(&pager), r#"{"page":1,"pageSize":2,"total":9}"#);
        assert_eq!(text(&items[0]), r#"{"a":"q\"uote}"}"#);
        assert_eq!(text(&items[1]), r#"{"b":[1,2,{}]}"#);
    }

    #[test]
    fn refuses_what_is_not_a_page() {
        for (body, why) in [
            (&b""[..], NotAPage::Syntax),
            (b"[]", NotAPage::Syntax),
            (b"{}", NotAPage::Shape),
            (br#"{"items":[]}"#, NotAPage::Shape),
            (br#"{"pager":{},"items":null}"#, NotAPage::Shape),
            (br#"{"pager":{},"pager":{}}"#, NotAPage::Shape),
            (br#"{"pager":{},"items":[],"pager":{}}"#, NotAPage::Shape),
            (br#"{"items":[],"pager":{},"pager":{}}"#, NotAPage::Shape),
            (br#"{"pager":{},"items":[],"items":[]}"#, NotAPage::Shape),
            (br#"{"items":[]}"#, NotAPage::Shape),
            (br#"{"pager":{},"items":[{"a":"x]}"#, NotAPage::Syntax),
            (br#"{"pager":{},"items":[{"a":[1}]]}"#, NotAPage::Syntax),
            (br#"{"pager":{}} trailing"#, NotAPage::Syntax),
            (br#"{"pager":{},}"#, NotAPage::Syntax),
            (br#"{"pager":{},"items":[1,]}"#, NotAPage::Syntax),
            (br#"{"pager":{},"items":["\"#, NotAPage::Syntax),
            (br#"{"pager":{},"items":[{"a":[}]}"#, NotAPage::Syntax),
        ] {
            assert_eq!(full(body), Err(why), "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn items_nest_at_most_128_deep() {
        let page = |depth: usize| {
            let body = format!(
                r#"{{"pager":{{}},"items":[{}{}]}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            full(body.as_bytes())
        };
        assert!(page(128).is_ok());
        assert_eq!(page(129), Err(NotAPage::Syntax));
    }

    #[test]
    fn an_escaped_key_means_what_it_decodes_to() {
        let body = br#"{"\u0070ager":{"total":1},"items":[]}"#;
        assert_eq!(full(body).unwrap().0, 14..25);
    }

    #[test]
    fn items_are_located_only_as_far_as_asked_and_the_tail_checked_at_the_end() {
        let body = br#"{"pager":{"total":3},"items":[{"a":1},{"b":2},{"c":3}] , "x":[1 }"#;
        let mut head = scan(body).unwrap();
        assert!(head.items.found().is_empty());
        head.items.locate(body, 2).unwrap();
        assert_eq!(head.items.found().len(), 2);
        assert!(!head.items.complete());
        // The third item is the last: locating it checks the broken tail.
        assert_eq!(head.items.locate(body, 3), Err(NotAPage::Syntax));
        assert_eq!(head.items.found().len(), 3, "a failed step changes nothing");
        assert_eq!(
            head.items.locate(body, 4),
            Err(NotAPage::Syntax),
            "and fails again"
        );
        let body = br#"{"pager":{},"items":[],"pager":{}}"#;
        let mut head = scan(body).unwrap();
        for _ in 0..2 {
            assert_eq!(head.items.locate(body, 1), Err(NotAPage::Shape));
        }
        // A body cut short is found with the item before the cut.
        let body = br#"{"pager":{"total":3},"items":[{"a":1},{"b":2} "#;
        let mut head = scan(body).unwrap();
        assert_eq!(head.items.locate(body, 1), Ok(()));
        assert_eq!(head.items.locate(body, 2), Err(NotAPage::Syntax));
        // A pager after the items is found by locating them all at once.
        let body = br#"{"items":[{"a":1}],"pager":{"total":1}}"#;
        let head = scan(body).unwrap();
        assert!(head.items.complete());
        assert_eq!(head.items.found().to_vec(), vec![10..17]);
    }

    /// A page's JSON with its members in `order` (0 pager, 1 items, 2 extra).
    fn page_body(
        pager: &Value,
        items: &[Value],
        extra: Option<&Value>,
        order: &[u8],
        pretty: bool,
    ) -> Vec<u8> {
        let text = |v: &Value| {
            if pretty {
                serde_json::to_string_pretty(v)
            } else {
                serde_json::to_string(v)
            }
            .unwrap()
        };
        let members: Vec<String> = order
            .iter()
            .filter_map(|k| match k {
                0 => Some(format!(r#""pager":{}"#, text(pager))),
                1 => Some(format!(
                    r#""items":{}"#,
                    text(&Value::Array(items.to_vec()))
                )),
                _ => extra.map(|e| format!(r#""extra" : {}"#, text(e))),
            })
            .collect();
        let separator = if pretty { ",\n  " } else { "," };
        format!("{{{}}}", members.join(separator)).into_bytes()
    }

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            // Quotes, backslashes, brackets, control and non-ASCII characters.
            "[\"\\\\{}\\[\\],:a-z\\n\\t\u{1}é中😀 ]{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-z\"\\\\]{0,6}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any page serde_json reads, the scanner reads the same way, whatever
        /// the items hold, the order of the keys and the spacing; located
        /// part-way, the items found are serde_json's first ones.
        #[test]
        fn agrees_with_serde_json_on_every_page(
            pager in json(),
            items in prop::collection::vec(json(), 0..6),
            extra in prop::option::of(json()),
            order in Just(vec![0, 1, 2]).prop_shuffle(),
            pretty in any::<bool>(),
            want in 0..8usize,
        ) {
            let body = page_body(&pager, &items, extra.as_ref(), &order, pretty);
            let theirs = serde_layout(&body).unwrap();
            prop_assert_eq!(full(&body).unwrap(), theirs.clone());
            let mut head = scan(&body).unwrap();
            prop_assert_eq!(&head.pager, &theirs.0);
            head.items.locate(&body, want).unwrap();
            let found = head.items.found();
            prop_assert!(found.len() >= want.min(theirs.1.len()));
            prop_assert_eq!(found, &theirs.1[..found.len()]);
        }

        /// Damaged bodies never panic, and whatever serde_json still reads as
        /// a page, the scanner locates identically.
        #[test]
        fn damaged_bodies_are_refused_or_read_as_serde_json_reads_them(
            items in prop::collection::vec(json(), 0..4),
            cut in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            mode in 0..3u8,
            order in Just(vec![0, 1]).prop_shuffle(),
        ) {
            let mut body = page_body(&serde_json::json!({ "total": 1 }), &items, None, &order, false);
            let at = cut.index(body.len());
            match mode {
                0 => body.truncate(at),
                1 => body[at] = byte,
                _ => body.insert(at, byte),
            }
            let ours = full(&body);
            if let Some(theirs) = serde_layout(&body) {
                prop_assert_eq!(ours.clone(), Ok(theirs));
            }
            if let Ok((pager, items)) = ours {
                for r in std::iter::once(&pager).chain(&items) {
                    prop_assert!(r.start <= r.end && r.end <= body.len());
                }
            }
        }
    }
}
