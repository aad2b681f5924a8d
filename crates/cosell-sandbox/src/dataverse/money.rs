//! Money on the wire: Dataverse writes Money columns (and their `_base` columns) with four
//! decimals, `"revenue": 5000000.0000`.
//!
//! Source: "Create a table row using the Web API" (D-CREATE, "Create with data returned") and
//! "Update and delete table rows" (D-UPDATE, "Update with data returned") print
//! `"revenue": 5000000.0000`.
//!
//! `serde_json::Value` cannot hold `5000000.0000` without the `arbitrary_precision` feature,
//! and that feature, unified across the workspace, would change number equality and parsing in
//! every crate. So the emulator keeps its rows as plain numbers and marks a Money member only
//! when it renders a response body ([`mark`]); [`to_json`] writes a marked member as the
//! pre-formatted number text. Rows read through the control API are never marked.

use serde_json::Value;

/// Prefix of a marked Money member: a string no JSON body can carry by accident (NUL is never
/// in a column value the emulator accepts as a number).
const MARK: &str = "\u{0}cosell-sandbox:money\u{0}";

/// Marks a Money value for [`to_json`]: a number becomes its four-decimal text; anything else
/// (null) is left alone.
pub(crate) fn mark(v: Value) -> Value {
    match v.as_f64() {
        Some(n) if v.is_number() => Value::String(format!("{MARK}{n:.4}")),
        _ => v,
    }
}

/// Compact JSON text of `v`, as `Value::to_string` writes it, except that marked Money members
/// are written as number literals with four decimals.
pub(crate) fn to_json(v: &Value) -> String {
    let mut out = String::new();
    write(&mut out, v);
    out
}

fn write(out: &mut String, v: &Value) {
    match v {
        Value::String(s) => match s.strip_prefix(MARK) {
            Some(number) => out.push_str(number),
            None => out.push_str(&Value::String(s.clone()).to_string()),
        },
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write(out, item);
            }
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn marked_money_is_written_with_four_decimals() {
        let v = json!({
            "estimatedvalue": mark(json!(250000)),
            "estimatedvalue_base": mark(json!(1234.5678)),
            "name": "a \"quoted\" name",
            "none": mark(Value::Null),
            "list": [mark(json!(0.5)), 3],
        });
        assert_eq!(
            to_json(&v),
            r#"{"estimatedvalue":250000.0000,"estimatedvalue_base":1234.5678,"list":[0.5000,3],"name":"a \"quoted\" name","none":null}"#
        );
        let back: Value = serde_json::from_str(&to_json(&v)).unwrap();
        assert_eq!(back["estimatedvalue"].as_f64(), Some(250000.0));
    }

    #[test]
    fn unmarked_values_are_written_as_serde_json_writes_them() {
        let v = json!({"a": [1, 2.5, null, true, "x\u{1}y"], "b": {"c": -3}});
        assert_eq!(to_json(&v), v.to_string());
    }
}
