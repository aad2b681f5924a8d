//! JSON Patch (RFC 6902) as the referrals API applies it: `add` and `replace` only, `…/-`
//! appends, and values sent as strings where the model has numbers or booleans are coerced
//! (the documented example sends `"value": "10000"` for `dealValue`).
//!
//! The service binds patches to a typed model, so a property that is absent or `null` can still
//! be replaced, and missing intermediate objects are created; array indexes are checked.

use serde_json::{Map, Value};

/// One parsed operation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PatchOp {
    pub(crate) op: Op,
    pub(crate) path: String,
    pub(crate) pointer: Vec<String>,
    pub(crate) value: Value,
}

/// The supported operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Add,
    Replace,
}

/// Properties whose values are numbers in the model.
const NUMERIC: &[&str] = &["dealValue", "value", "price", "quantity"];
/// Properties whose values are booleans in the model.
const BOOLEAN: &[&str] = &[
    "consentToContact",
    "consentToToShareInfoWithOthers",
    "consentToShareReferralWithMicrosoftSellers",
    "consentToMicrosoftToContactSpecificPartners",
    "favorite",
    "isDeployedOnAzure",
    "isMarketplaceTransacted",
    "disableNotifications",
    "customerRequestedContact",
];

/// Parses a JSON Patch document; refuses anything but an array of `add`/`replace` operations
/// (patch-a-referral: "The API currently only supports the `replace` and `add` operations").
pub(crate) fn parse(doc: &Value) -> Result<Vec<PatchOp>, String> {
    let Value::Array(ops) = doc else {
        return Err(
            "The request body must be a JSON Patch document (a JSON array of operations).".into(),
        );
    };
    if ops.is_empty() {
        return Err("The JSON Patch document contains no operations.".into());
    }
    ops.iter()
        .enumerate()
        .map(|(i, raw)| {
            let obj = raw
                .as_object()
                .ok_or_else(|| format!("Operation {i} is not a JSON object."))?;
            let field = |name: &str| {
                obj.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v)
            };
            let op = match field("op").and_then(Value::as_str) {
                Some(s) if s.eq_ignore_ascii_case("add") => Op::Add,
                Some(s) if s.eq_ignore_ascii_case("replace") => Op::Replace,
                Some(other) => {
                    return Err(format!(
                        "Operation {i}: `{other}` is not supported; the API supports only the `replace` and `add` operations."
                    ));
                }
                None => return Err(format!("Operation {i} has no `op`.")),
            };
            let path = field("path")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("Operation {i} has no `path`."))?
                .to_string();
            let pointer = parse_pointer(&path).map_err(|e| format!("Operation {i}: {e}"))?;
            let value = field("value")
                .cloned()
                .ok_or_else(|| format!("Operation {i} (`{path}`) has no `value`."))?;
            Ok(PatchOp {
                op,
                path,
                pointer,
                value,
            })
        })
        .collect()
}

fn parse_pointer(path: &str) -> Result<Vec<String>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(format!("path `{path}` must start with `/`"));
    };
    if rest.is_empty() {
        return Err("the whole referral cannot be replaced by a patch; use PUT".into());
    }
    rest.split('/')
        .map(|seg| {
            if seg.is_empty() {
                return Err(format!("path `{path}` has an empty segment"));
            }
            Ok(seg.replace("~1", "/").replace("~0", "~"))
        })
        .collect()
}

/// Applies `ops` to `doc` in order.
pub(crate) fn apply(doc: &mut Value, ops: &[PatchOp]) -> Result<(), String> {
    for op in ops {
        apply_one(doc, op)?;
    }
    Ok(())
}

fn apply_one(doc: &mut Value, op: &PatchOp) -> Result<(), String> {
    let Some((last, parents)) = op.pointer.split_last() else {
        return Err("empty path".into());
    };
    let mut node = doc;
    for (depth, seg) in parents.iter().enumerate() {
        let next_is_index = parents
            .get(depth + 1)
            .or(Some(last))
            .is_some_and(|s| s == "-" || s.parse::<usize>().is_ok());
        node = step(node, seg, next_is_index, &op.path)?;
    }
    match node {
        Value::Array(items) => {
            if last == "-" {
                if op.op == Op::Replace {
                    return Err(format!(
                        "`{}`: `-` (append) is valid only with `add`",
                        op.path
                    ));
                }
                let value = coerce(None, None, op.value.clone());
                items.push(value);
                return Ok(());
            }
            let index: usize = last
                .parse()
                .map_err(|_| format!("`{}`: `{last}` is not an array index", op.path))?;
            match op.op {
                Op::Add if index <= items.len() => {
                    items.insert(index, op.value.clone());
                    Ok(())
                }
                Op::Replace if index < items.len() => {
                    let existing = items.get(index).cloned();
                    if let Some(slot) = items.get_mut(index) {
                        *slot = coerce(existing.as_ref(), None, op.value.clone());
                    }
                    Ok(())
                }
                _ => Err(format!(
                    "`{}`: index {index} is out of range (the array has {} items)",
                    op.path,
                    items.len()
                )),
            }
        }
        Value::Object(map) => {
            let existing = map.get(last).cloned();
            let value = coerce(existing.as_ref(), Some(last), op.value.clone());
            map.insert(last.clone(), value);
            Ok(())
        }
        Value::Null => {
            let mut map = Map::new();
            map.insert(last.clone(), coerce(None, Some(last), op.value.clone()));
            *node = Value::Object(map);
            Ok(())
        }
        _ => Err(format!(
            "`{}`: the parent of `{last}` is not an object or array",
            op.path
        )),
    }
}

/// One step down; creates a missing (or null) intermediate object or array.
fn step<'a>(
    node: &'a mut Value,
    seg: &str,
    next_is_index: bool,
    path: &str,
) -> Result<&'a mut Value, String> {
    if node.is_null() {
        *node = Value::Object(Map::new());
    }
    match node {
        Value::Object(map) => {
            let child = map.entry(seg.to_string()).or_insert(Value::Null);
            if child.is_null() {
                *child = if next_is_index {
                    Value::Array(Vec::new())
                } else {
                    Value::Object(Map::new())
                };
            }
            Ok(child)
        }
        Value::Array(items) => {
            let len = items.len();
            let index: usize = seg
                .parse()
                .map_err(|_| format!("`{path}`: `{seg}` is not an array index"))?;
            items.get_mut(index).ok_or_else(|| {
                format!("`{path}`: index {index} is out of range (the array has {len} items)")
            })
        }
        _ => Err(format!(
            "`{path}`: `{seg}` is inside a value that is not an object"
        )),
    }
}

/// Coerces a string to the type the model has at this place.
fn coerce(existing: Option<&Value>, name: Option<&String>, value: Value) -> Value {
    let Value::String(s) = &value else {
        return value;
    };
    let wants_number = existing.is_some_and(Value::is_number)
        || name.is_some_and(|n| NUMERIC.iter().any(|k| k.eq_ignore_ascii_case(n)));
    let wants_bool = existing.is_some_and(Value::is_boolean)
        || name.is_some_and(|n| BOOLEAN.iter().any(|k| k.eq_ignore_ascii_case(n)));
    let t = s.trim();
    if wants_number {
        if let Ok(i) = t.parse::<i64>() {
            return Value::from(i);
        }
        if let Some(n) = t.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
            return Value::Number(n);
        }
    }
    if wants_bool {
        if t.eq_ignore_ascii_case("true") {
            return Value::Bool(true);
        }
        if t.eq_ignore_ascii_case("false") {
            return Value::Bool(false);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(doc: Value, ops: Value) -> Result<Value, String> {
        let ops = parse(&ops)?;
        let mut doc = doc;
        apply(&mut doc, &ops)?;
        Ok(doc)
    }

    #[test]
    fn replace_add_append_and_coercion() {
        let doc = json!({"details": {"dealValue": 5, "notes": "a"}, "team": [{"email": "a"}]});
        let out = run(
            doc,
            json!([
                {"op": "replace", "path": "/details/dealValue", "value": "10000"},
                {"op": "replace", "path": "/details/notes", "value": "b"},
                {"op": "add", "path": "/team/-", "value": {"email": "b"}},
                {"op": "add", "path": "/team/-", "value": {"email": "b"}},
                {"op": "replace", "path": "/consent/consentToContact", "value": "true"},
                {"op": "add", "path": "/details/requirements/solutions/-", "value": {"id": "SOL-1"}},
                {"op": "replace", "path": "/externalReferenceId", "value": "x"}
            ]),
        )
        .unwrap();
        assert_eq!(out["details"]["dealValue"], json!(10000));
        assert_eq!(out["details"]["notes"], json!("b"));
        assert_eq!(out["team"].as_array().unwrap().len(), 3);
        assert_eq!(out["consent"]["consentToContact"], json!(true));
        assert_eq!(
            out["details"]["requirements"]["solutions"],
            json!([{"id": "SOL-1"}])
        );
        assert_eq!(out["externalReferenceId"], json!("x"));
    }

    #[test]
    fn refusals() {
        let doc = json!({"team": []});
        for (ops, needle) in [
            (json!({"op": "add"}), "JSON array"),
            (json!([]), "no operations"),
            (
                json!([{"op": "remove", "path": "/team"}]),
                "only the `replace` and `add`",
            ),
            (
                json!([{"op": "move", "path": "/a", "from": "/b"}]),
                "`move`",
            ),
            (
                json!([{"op": "add", "path": "team", "value": 1}]),
                "start with `/`",
            ),
            (json!([{"op": "add", "path": "/", "value": 1}]), "PUT"),
            (
                json!([{"op": "add", "path": "/team", "value": 1}, 5]),
                "not a JSON object",
            ),
            (
                json!([{"op": "replace", "path": "/team/-", "value": 1}]),
                "only with `add`",
            ),
            (
                json!([{"op": "replace", "path": "/team/0", "value": 1}]),
                "out of range",
            ),
            (
                json!([{"op": "add", "path": "/team/x", "value": 1}]),
                "not an array index",
            ),
            (
                json!([{"op": "add", "path": "/team/0/a/b", "value": 1}]),
                "out of range",
            ),
            (json!([{"op": "replace", "path": "/x"}]), "no `value`"),
        ] {
            let e = run(doc.clone(), ops.clone()).expect_err(&ops.to_string());
            assert!(e.contains(needle), "{ops}: {e}");
        }
    }
}
