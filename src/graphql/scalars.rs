//! The `DateTime` scalar: RFC 3339 with a required offset on input; UTC,
//! milliseconds and `Z` on output, exactly like the platform.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::Utc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTime(pub chrono::DateTime<Utc>);

/// RFC 3339 with an offset (`Z` or `+08:00`); answered in UTC with milliseconds.
#[Scalar(
    name = "DateTime",
    specified_by_url = "https://www.rfc-editor.org/rfc/rfc3339"
)]
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        let Value::String(s) = &value else {
            return Err(InputValueError::custom("a DateTime is an RFC 3339 string"));
        };
        crate::time::parse_rfc3339(s).map(DateTime).ok_or_else(|| {
            InputValueError::custom(format!(
                "{s:?} is not an RFC 3339 time with an offset, such as \"2026-11-01T00:00:00Z\" or \"2026-11-01T08:00:00+08:00\""
            ))
        })
    }

    fn to_value(&self) -> Value {
        Value::String(crate::time::format(self.0))
    }
}
