//! GraphQL over HTTP, as its specification says (docs/api.md): which media type
//! a response uses, the request's parameters from a JSON body (POST) or a
//! query string (GET), and which operation a GET may run. Pure functions; the
//! handlers in [`crate::http`] apply them.

use async_graphql::parser::types::{
    DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
    SelectionSet,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The media type of a GraphQL response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    /// `application/graphql-response+json`: request errors are 4xx and a
    /// response to a request that failed before execution has no `data`.
    GraphQLResponse,
    /// `application/json`, the legacy type: GraphQL errors answer 200.
    Json,
}

impl MediaType {
    pub fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::GraphQLResponse => "application/graphql-response+json; charset=utf-8",
            Self::Json => "application/json",
        })
    }

    /// The status of a well-formed request that fails before execution: its
    /// document does not parse or validate, its variables do not coerce, it
    /// is refused for its cost or size. (A request that is not well-formed,
    /// such as a body that is not JSON, is a 400 in both types.)
    pub fn request_error_status(self) -> StatusCode {
        match self {
            Self::GraphQLResponse => StatusCode::BAD_REQUEST,
            Self::Json => StatusCode::OK,
        }
    }
}

/// The media type to answer with, from `Accept`: `application/graphql-response+json`
/// when the client lists it (at the highest quality it gives), else
/// `application/json` for `application/json`, `application/*`, `*/*` or no
/// `Accept` at all; `None` when the client accepts neither (406).
pub fn negotiate(headers: &HeaderMap) -> Option<MediaType> {
    let mut values = headers.get_all(header::ACCEPT).iter().peekable();
    if values.peek().is_none() {
        return Some(MediaType::Json);
    }
    let mut best: Option<(f32, MediaType)> = None;
    let mut listed = false;
    for range in values
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim();
        if essence.is_empty() {
            continue;
        }
        listed = true;
        let mut q = 1.0f32;
        for parameter in parts {
            if let Some((name, value)) = parameter.split_once('=')
                && name.trim().eq_ignore_ascii_case("q")
            {
                q = value.trim().parse().unwrap_or(0.0);
            }
        }
        if q.is_nan() || q <= 0.0 {
            continue;
        }
        let media = if essence.eq_ignore_ascii_case("application/graphql-response+json") {
            MediaType::GraphQLResponse
        } else if ["application/json", "application/*", "*/*"]
            .iter()
            .any(|m| essence.eq_ignore_ascii_case(m))
        {
            MediaType::Json
        } else {
            continue;
        };
        let better = match best {
            None => true,
            Some((best_q, best_media)) => {
                q > best_q
                    || (q == best_q
                        && media == MediaType::GraphQLResponse
                        && best_media == MediaType::Json)
            }
        };
        if better {
            best = Some((q, media));
        }
    }
    match best {
        Some((_, media)) => Some(media),
        // An empty `Accept` says nothing.
        None if !listed => Some(MediaType::Json),
        None => None,
    }
}

/// A stream of results over plain HTTP, for subscriptions where WebSockets
/// do not pass (docs/subscriptions-http.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProtocol {
    /// GraphQL over Server-Sent Events, distinct connections mode
    /// (`Accept: text/event-stream`, as the npm `graphql-sse` client sends).
    Sse,
    /// Apollo's multipart HTTP subscriptions (`Accept:
    /// multipart/mixed;subscriptionSpec=1.0`, as Apollo Client's `HttpLink`
    /// sends for a subscription).
    Multipart,
}

/// The stream a POST asks for, from `Accept`: `text/event-stream`, or
/// `multipart/mixed` with a `subscriptionSpec` parameter of 1.0, when the
/// client prefers it to every JSON type it lists (a tie goes to the stream:
/// Apollo Client lists `application/json` after it); else `None`, and the
/// request is an ordinary GraphQL-over-HTTP one ([`negotiate`]).
pub fn negotiate_stream(headers: &HeaderMap) -> Option<StreamProtocol> {
    let mut stream: Option<(f32, StreamProtocol)> = None;
    let mut json = 0.0f32;
    for range in headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim();
        let mut q = 1.0f32;
        let mut subscription_spec = None;
        for parameter in parts {
            let Some((name, value)) = parameter.split_once('=') else {
                continue;
            };
            let (name, value) = (name.trim(), value.trim().trim_matches('"'));
            if name.eq_ignore_ascii_case("q") {
                q = value.parse().unwrap_or(0.0);
            } else if name.eq_ignore_ascii_case("subscriptionSpec") {
                subscription_spec = Some(value);
            }
        }
        if q.is_nan() || q <= 0.0 {
            continue;
        }
        let protocol = if essence.eq_ignore_ascii_case("text/event-stream") {
            StreamProtocol::Sse
        } else if essence.eq_ignore_ascii_case("multipart/mixed")
            && subscription_spec.is_some_and(|v| v == "1.0" || v == "1")
        {
            StreamProtocol::Multipart
        } else {
            if [
                "application/graphql-response+json",
                "application/json",
                "application/*",
                "*/*",
            ]
            .iter()
            .any(|m| essence.eq_ignore_ascii_case(m))
            {
                json = json.max(q);
            }
            continue;
        };
        if stream.is_none_or(|(best, _)| q > best) {
            stream = Some((q, protocol));
        }
    }
    stream
        .filter(|(q, _)| *q >= json)
        .map(|(_, protocol)| protocol)
}

/// Whether a POST's `Content-Type` is `application/json` (in UTF-8, the
/// only charset JSON has); anything else, or none, is 415.
pub fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mut parts = value.split(';');
    if !parts
        .next()
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("application/json"))
    {
        return false;
    }
    parts.all(|parameter| match parameter.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            value.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    })
}

/// The parameters of one GraphQL-over-HTTP request, each of the type the
/// specification requires.
#[derive(Debug, Default, PartialEq)]
pub struct Params {
    pub query: Option<String>,
    pub operation_name: Option<String>,
    pub variables: Option<Map<String, Value>>,
    pub extensions: Option<Map<String, Value>>,
    /// A persisted document's id: `documentId` (GraphQL over HTTP's
    /// persisted documents) or `doc_id` (what Relay's docs send).
    pub document_id: Option<String>,
}

/// A request object as sent, each member checked for its type by [`Body::params`].
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Body {
    query: Option<Value>,
    operation_name: Option<Value>,
    variables: Option<Value>,
    extensions: Option<Value>,
    document_id: Option<Value>,
    #[serde(rename = "doc_id")]
    doc_id: Option<Value>,
}

impl Body {
    fn params(self) -> Result<Params, String> {
        Ok(Params {
            query: string("query", self.query)?,
            operation_name: string("operationName", self.operation_name)?,
            variables: object("variables", self.variables)?,
            extensions: object("extensions", self.extensions)?,
            document_id: document_id(
                string("documentId", self.document_id)?,
                string("doc_id", self.doc_id)?,
            )?,
        })
    }
}

impl Params {
    /// From a POST body: one JSON object (a batch, a JSON array, is not
    /// supported; serde would also take an array as the struct's fields).
    pub fn from_json(body: &[u8]) -> Result<Self, String> {
        if body.trim_ascii_start().first() != Some(&b'{') {
            return Err(
                "the body must be a JSON GraphQL request {\"query\": ...}: a JSON object is expected (batches are not supported)"
                    .into(),
            );
        }
        let body: Body = serde_json::from_slice(body).map_err(|e| {
            format!("the body must be a JSON GraphQL request {{\"query\": ...}}: {e}")
        })?;
        body.params()
    }

    /// From a JSON object already read (a WebSocket `subscribe`'s payload).
    pub fn from_value(value: Value) -> Result<Self, String> {
        if !value.is_object() {
            return Err("the payload must be a GraphQL request {\"query\": ...}".into());
        }
        let body: Body = serde_json::from_value(value).map_err(|e| {
            format!("the payload must be a GraphQL request {{\"query\": ...}}: {e}")
        })?;
        body.params()
    }

    /// From a GET's query string: `query`, `operationName`, and `variables`
    /// and `extensions` as JSON, `documentId` or `doc_id`; each at most
    /// once, unknown names ignored.
    pub fn from_query_string(raw: &str) -> Result<Self, String> {
        let uri: axum::http::Uri = format!("/?{raw}")
            .parse()
            .map_err(|_| "the query string is not valid".to_owned())?;
        let pairs = axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri)
            .map_err(|e| format!("the query string is not valid: {e}"))?
            .0;
        let mut params = Self::default();
        let mut seen: Vec<String> = Vec::new();
        for (name, value) in pairs {
            let name = name.as_str();
            if !matches!(
                name,
                "query" | "operationName" | "variables" | "extensions" | "documentId" | "doc_id"
            ) {
                continue;
            }
            if seen.iter().any(|s| s == name) {
                return Err(format!("`{name}` is given more than once"));
            }
            seen.push(name.to_owned());
            let json = |value: &str| {
                serde_json::from_str::<Value>(value)
                    .map_err(|e| format!("`{name}` must be a JSON object: {e}"))
            };
            match name {
                "query" => params.query = Some(value),
                "operationName" => params.operation_name = Some(value),
                "documentId" | "doc_id" => {
                    params.document_id = document_id(params.document_id.take(), Some(value))?;
                }
                "variables" => params.variables = object(name, Some(json(&value)?))?,
                _ => params.extensions = object(name, Some(json(&value)?))?,
            }
        }
        Ok(params)
    }

    /// The `async-graphql` request for `query` with these parameters.
    pub fn request(&self, query: String) -> async_graphql::Request {
        let mut request = async_graphql::Request::new(query);
        if let Some(name) = &self.operation_name {
            request = request.operation_name(name.clone());
        }
        if let Some(variables) = &self.variables {
            request = request.variables(async_graphql::Variables::from_json(Value::Object(
                variables.clone(),
            )));
        }
        request
    }
}

fn string(name: &str, value: Option<Value>) -> Result<Option<String>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{name}` must be a string")),
    }
}

/// One document id, whichever name it came under; an empty one is none.
fn document_id(a: Option<String>, b: Option<String>) -> Result<Option<String>, String> {
    match (a.filter(|s| !s.is_empty()), b.filter(|s| !s.is_empty())) {
        (Some(_), Some(_)) => Err("give `documentId` or `doc_id`, not both".into()),
        (a, b) => Ok(a.or(b)),
    }
}

fn object(name: &str, value: Option<Value>) -> Result<Option<Map<String, Value>>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(_) => Err(format!("`{name}` must be a JSON object")),
    }
}

/// The operation a request would run, when the document names it
/// unambiguously (otherwise execution reports the problem).
fn operation<'d>(
    doc: &'d ExecutableDocument,
    name: Option<&str>,
) -> Option<&'d OperationDefinition> {
    match &doc.operations {
        DocumentOperations::Single(op) => Some(&op.node),
        DocumentOperations::Multiple(ops) => match name {
            Some(name) => ops.get(name).map(|op| &op.node),
            None if ops.len() == 1 => ops.values().next().map(|op| &op.node),
            None => None,
        },
    }
}

/// The type of the operation a request would run (see [`operation`]).
pub fn operation_type(doc: &ExecutableDocument, name: Option<&str>) -> Option<OperationType> {
    operation(doc, name).map(|op| op.ty)
}

/// The names of the fields the operation selects at its root, through
/// fragments (each expanded once); empty when there is no such operation.
pub fn root_fields<'d>(doc: &'d ExecutableDocument, name: Option<&str>) -> Vec<&'d str> {
    fn walk<'d>(
        doc: &'d ExecutableDocument,
        set: &'d SelectionSet,
        expanded: &mut Vec<&'d str>,
        fields: &mut Vec<&'d str>,
    ) {
        for selection in &set.items {
            match &selection.node {
                Selection::Field(field) => fields.push(field.node.name.node.as_str()),
                Selection::InlineFragment(inline) => {
                    walk(doc, &inline.node.selection_set.node, expanded, fields);
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if expanded.contains(&name) {
                        continue;
                    }
                    expanded.push(name);
                    if let Some(fragment) = doc.fragments.get(&spread.node.fragment_name.node) {
                        walk(doc, &fragment.node.selection_set.node, expanded, fields);
                    }
                }
            }
        }
    }
    let mut fields = Vec::new();
    if let Some(op) = operation(doc, name) {
        walk(doc, &op.selection_set.node, &mut Vec::new(), &mut fields);
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(values: &[&str]) -> Option<MediaType> {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        }
        negotiate(&headers)
    }

    #[test]
    fn the_media_type_follows_accept() {
        use MediaType::*;
        assert_eq!(accept(&[]), Some(Json));
        assert_eq!(accept(&[""]), Some(Json));
        assert_eq!(accept(&["*/*"]), Some(Json));
        assert_eq!(accept(&["application/json"]), Some(Json));
        assert_eq!(
            accept(&["application/graphql-response+json"]),
            Some(GraphQLResponse)
        );
        assert_eq!(
            accept(&["application/json, application/graphql-response+json"]),
            Some(GraphQLResponse)
        );
        assert_eq!(
            accept(&["application/graphql-response+json, application/json;q=0.9"]),
            Some(GraphQLResponse)
        );
        assert_eq!(
            accept(&["application/graphql-response+json;q=0.5, application/json"]),
            Some(Json)
        );
        assert_eq!(accept(&["text/html", "*/*;q=0.8"]), Some(Json));
        assert_eq!(accept(&["text/html"]), None);
        assert_eq!(accept(&["application/json;q=0"]), None);
        assert_eq!(accept(&["image/png, application/xml"]), None);
    }

    #[test]
    fn a_stream_is_chosen_when_accept_prefers_it() {
        use StreamProtocol::*;
        let stream = |values: &[&str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            }
            negotiate_stream(&headers)
        };
        assert_eq!(stream(&["text/event-stream"]), Some(Sse));
        // What Apollo Client's HttpLink sends for a subscription.
        assert_eq!(
            stream(&["multipart/mixed;boundary=graphql;subscriptionSpec=1.0,application/json"]),
            Some(Multipart)
        );
        assert_eq!(
            stream(&[r#"multipart/mixed; boundary="graphql"; subscriptionSpec="1.0""#]),
            Some(Multipart)
        );
        assert_eq!(stream(&["application/json, text/event-stream;q=0.5"]), None);
        // @defer's multipart is not a subscription stream.
        assert_eq!(
            stream(&["multipart/mixed;deferSpec=20220824,application/json"]),
            None
        );
        assert_eq!(stream(&["multipart/mixed"]), None);
        assert_eq!(stream(&["text/event-stream;q=0"]), None);
        assert_eq!(stream(&[]), None);
        assert_eq!(stream(&["*/*"]), None);
    }

    #[test]
    fn only_json_in_utf8_is_a_json_body() {
        let ct = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_json_content_type(&h)
        };
        assert!(ct("application/json"));
        assert!(ct("Application/JSON; charset=UTF-8"));
        assert!(ct("application/json; charset=\"utf-8\""));
        assert!(!ct("application/json; charset=utf-16"));
        assert!(!ct("text/plain"));
        assert!(!ct("application/graphql-response+json"));
        assert!(!ct("application/x-www-form-urlencoded"));
        assert!(!is_json_content_type(&HeaderMap::new()));
    }

    #[test]
    fn parameters_must_have_their_types() {
        let p = Params::from_json(br#"{"query":"{ a }","variables":null,"extensions":{"x":1}}"#)
            .unwrap();
        assert_eq!(p.query.as_deref(), Some("{ a }"));
        assert!(p.variables.is_none() && p.extensions.is_some());
        for bad in [
            r#"{"query":5}"#,
            r#"{"query":"{ a }","operationName":false}"#,
            r#"{"query":"{ a }","variables":"x"}"#,
            r#"{"query":"{ a }","variables":[1]}"#,
            r#"{"query":"{ a }","extensions":0}"#,
            r#"[{"query":"{ a }"}]"#,
            r#"{ "not json"#,
        ] {
            assert!(Params::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(Params::from_json(b"{}").unwrap(), Params::default());
        for (body, id) in [
            (r#"{"documentId":"sha256:ab"}"#, Some("sha256:ab")),
            (r#"{"doc_id":"3be4","variables":{}}"#, Some("3be4")),
            (r#"{"documentId":""}"#, None),
        ] {
            assert_eq!(
                Params::from_json(body.as_bytes())
                    .unwrap()
                    .document_id
                    .as_deref(),
                id
            );
        }
        assert!(Params::from_json(br#"{"documentId":"a","doc_id":"b"}"#).is_err());
        assert!(Params::from_json(br#"{"doc_id":5}"#).is_err());
    }

    #[test]
    fn a_query_string_holds_the_same_parameters() {
        let p = Params::from_query_string(
            "query=query%20Q(%24n%3A%20Int)%20%7B%20a%20%7D&operationName=Q&variables=%7B%22n%22%3A1%7D&other=x",
        )
        .unwrap();
        assert_eq!(p.query.as_deref(), Some("query Q($n: Int) { a }"));
        assert_eq!(p.operation_name.as_deref(), Some("Q"));
        assert_eq!(p.variables.unwrap()["n"], 1);
        assert!(Params::from_query_string("query=a&query=b").is_err());
        assert!(Params::from_query_string("query=a&variables=%5B1%5D").is_err());
        assert!(Params::from_query_string("query=a&variables=nope").is_err());
        assert!(Params::from_query_string("query=a&extensions=5").is_err());
        assert_eq!(Params::from_query_string("").unwrap(), Params::default());
        let p = Params::from_query_string("documentId=sha256%3Aab&variables=%7B%7D").unwrap();
        assert_eq!(p.document_id.as_deref(), Some("sha256:ab"));
        let p = Params::from_query_string("doc_id=3be4").unwrap();
        assert_eq!(p.document_id.as_deref(), Some("3be4"));
        assert!(Params::from_query_string("doc_id=a&documentId=b").is_err());
    }

    #[test]
    fn the_operation_type_is_read_from_the_document() {
        let doc = |q| async_graphql::parser::parse_query(q).unwrap();
        assert_eq!(
            operation_type(&doc("{ a }"), None),
            Some(OperationType::Query)
        );
        assert_eq!(
            operation_type(&doc("mutation M { a }"), None),
            Some(OperationType::Mutation)
        );
        let two = doc("query A { a } mutation B { b }");
        assert_eq!(operation_type(&two, None), None);
        assert_eq!(
            operation_type(&two, Some("B")),
            Some(OperationType::Mutation)
        );
        assert_eq!(operation_type(&two, Some("C")), None);
    }

    #[test]
    fn the_root_fields_are_read_through_fragments() {
        let doc = |q| async_graphql::parser::parse_query(q).unwrap();
        let d = doc(
            "subscription S { ...F ... on Subscription { b: userVisitAdded } } fragment F on Subscription { userVisitStats ...F }",
        );
        assert_eq!(root_fields(&d, None), ["userVisitStats", "userVisitAdded"]);
        let two = doc("query A { a } subscription B { userVisitStats { visits } }");
        assert_eq!(root_fields(&two, Some("B")), ["userVisitStats"]);
        assert!(root_fields(&two, None).is_empty());
    }
}
