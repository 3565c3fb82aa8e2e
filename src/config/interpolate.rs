//! `${VAR}` / `${VAR:-default}` interpolation over the parsed YAML tree, so every problem
//! can name the key it occurred at. `$${` writes a literal `${`.

use serde_yaml_ng::Value;

use super::Problem;

/// Replaces variables in every string scalar of `value`, looking names up with `lookup`.
/// Unset variables without a default become problems (naming the variable and key, never a
/// value) and are replaced by an empty string so the rest of the file is still checked.
pub fn interpolate(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    walk(value, String::new(), lookup, problems);
}

fn walk(
    value: &mut Value,
    path: String,
    lookup: &dyn Fn(&str) -> Option<String>,
    problems: &mut Vec<Problem>,
) {
    match value {
        Value::String(s) if s.contains('$') => {
            let whole_expression =
                s.starts_with("${") && s.ends_with('}') && s.matches("${").count() == 1;
            match expand(s, lookup) {
                Ok(expanded) => {
                    // `epochs: ${EPOCHS:-50}` should still be a number.
                    *value = if whole_expression {
                        typed_scalar(&expanded).unwrap_or(Value::String(expanded))
                    } else {
                        Value::String(expanded)
                    };
                }
                Err(message) => {
                    problems.push(Problem::new(&path, message));
                    *value = Value::String(String::new());
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), lookup, problems);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = match key {
                    Value::String(k) => k.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_owned(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                walk(item, child, lookup, problems);
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, lookup, problems),
        _ => {}
    }
}

fn typed_scalar(text: &str) -> Option<Value> {
    match serde_yaml_ng::from_str::<Value>(text) {
        Ok(v @ (Value::Number(_) | Value::Bool(_))) => Some(v),
        _ => None,
    }
}

/// Expands one string; errors name the variable only.
pub fn expand(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("unterminated `${{` in {input:?}: expected `${{NAME}}`"))?;
            let expr = &tail[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!(
                    "invalid variable name {name:?}: expected letters, digits and `_`"
                ));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} for a fallback)"
                    ));
                }
            }
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = &after[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.example".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_defaults_and_escapes() {
        assert_eq!(
            expand("pg://${HOST}:5432", &env).unwrap(),
            "pg://db.example:5432"
        );
        assert_eq!(expand("${MISSING:-x}", &env).unwrap(), "x");
        assert_eq!(expand("${EMPTY:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("cost $5 $${HOST}", &env).unwrap(), "cost $5 ${HOST}");
        assert!(
            expand("${MISSING}", &env)
                .unwrap_err()
                .contains("MISSING is not set")
        );
        assert!(expand("${HOST", &env).unwrap_err().contains("unterminated"));
        assert!(
            expand("${BAD-NAME}", &env)
                .unwrap_err()
                .contains("invalid variable")
        );
    }

    #[test]
    fn whole_expressions_keep_their_type_and_errors_name_the_key() {
        let mut v: Value =
            serde_yaml_ng::from_str("a: {epochs: '${N:-7}', uri: '${GONE}'}").unwrap();
        let mut problems = Vec::new();
        interpolate(&mut v, &env, &mut problems);
        assert_eq!(v["a"]["epochs"], Value::from(7));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].key, "a.uri");
        assert!(problems[0].message.contains("GONE"));
    }
}
