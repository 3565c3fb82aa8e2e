//! README's "Configuration reference" is generated from the schema, so it cannot drift: every
//! key of `src/config/schema.rs` with its type, its default (from the schema's own `Default`
//! impls, by serialising a configuration that sets only the required keys) and its doc
//! comment. The test fails when README differs; regenerate with
//!
//! ```sh
//! UPDATE_CONFIG_REFERENCE=1 cargo test --test config_reference
//! ```

use std::collections::HashMap;
use std::path::Path;

use binance_ml::config::{self, Origin, Overrides};
use serde_yaml_ng::Value;

const BEGIN: &str = "<!-- BEGIN config-reference: generated from src/config/schema.rs by tests/config_reference.rs; UPDATE_CONFIG_REFERENCE=1 cargo test --test config_reference -->";
const END: &str = "<!-- END config-reference -->";

/// The only keys without a default.
const REQUIRED: &str = r#"
data:
  source_type: synthetic
  asset_pairs: {target_asset: BTCUSDT}
  time_range: {start_date: "2024-01-01", end_date: "2024-01-02", cadence_seconds: 10}
"#;

/// A struct field: doc comment, name, Rust type, whether serde fills it in when absent.
struct Field {
    doc: String,
    name: String,
    ty: String,
    defaulted: bool,
}

/// What the schema file declares.
#[derive(Default)]
struct Schema {
    structs: HashMap<String, Vec<Field>>,
    enums: HashMap<String, Vec<String>>,
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Reads the rustfmt-formatted schema: `pub struct` / `pub enum` items with their doc comments
/// and serde attributes.
fn parse_schema(text: &str) -> Schema {
    let mut schema = Schema::default();
    let mut lines = text.lines().peekable();
    let mut attrs: Vec<String> = Vec::new();
    while let Some(line) = lines.next() {
        if line.starts_with("#[") {
            attrs.push(line.to_owned());
            continue;
        }
        let item = |prefix: &str| {
            line.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(" {"))
                .map(str::to_owned)
        };
        if let Some(name) = item("pub struct ") {
            let all_default = attrs
                .iter()
                .any(|a| a.contains("serde(") && a.contains("default"));
            let (mut doc, mut field_default) = (Vec::new(), false);
            let mut fields = Vec::new();
            for l in lines.by_ref() {
                let l = l.trim_end();
                if l == "}" {
                    break;
                }
                if let Some(d) = l.strip_prefix("    /// ") {
                    doc.push(d.to_owned());
                } else if l == "    ///" {
                    doc.push(String::new());
                } else if l.starts_with("    #[serde(") {
                    field_default |= l.contains("default");
                } else if let Some(rest) = l.strip_prefix("    pub ") {
                    let (field, ty) = rest.split_once(": ").expect("`pub name: Type,`");
                    let ty = ty.trim_end_matches(',').to_owned();
                    fields.push(Field {
                        doc: doc.join(" ").trim().to_owned(),
                        defaulted: all_default || field_default || ty.starts_with("Option<"),
                        name: field.to_owned(),
                        ty,
                    });
                    doc.clear();
                    field_default = false;
                }
            }
            schema.structs.insert(name, fields);
        } else if let Some(name) = item("pub enum ") {
            let rename = |v: &str| {
                if attrs
                    .iter()
                    .any(|a| a.contains("rename_all = \"snake_case\""))
                {
                    snake_case(v)
                } else if attrs
                    .iter()
                    .any(|a| a.contains("rename_all = \"UPPERCASE\""))
                {
                    v.to_uppercase()
                } else {
                    v.to_owned()
                }
            };
            let mut variants = Vec::new();
            for l in lines.by_ref() {
                if l == "}" {
                    break;
                }
                // Unit variants only: `    Name,` (data-carrying enums are not keys).
                if let Some(v) = l.strip_prefix("    ").and_then(|v| v.strip_suffix(','))
                    && v.chars().all(|c| c.is_ascii_alphanumeric())
                {
                    variants.push(rename(v));
                }
            }
            schema.enums.insert(name, variants);
        }
        if !line.starts_with("///") {
            attrs.clear();
        }
    }
    schema
}

/// A YAML-ish type name for a Rust type of the schema.
fn type_name(schema: &Schema, ty: &str) -> String {
    if let Some(inner) = ty.strip_prefix("Option<").and_then(|t| t.strip_suffix('>')) {
        return type_name(schema, inner);
    }
    if let Some(inner) = ty.strip_prefix("Vec<").and_then(|t| t.strip_suffix('>')) {
        return format!("list of {}", type_name(schema, inner));
    }
    if let Some(inner) = ty
        .strip_prefix("BTreeMap<String, ")
        .and_then(|t| t.strip_suffix('>'))
    {
        return format!("map of name to {}", type_name(schema, inner));
    }
    match ty {
        "String" => "string".into(),
        "bool" => "boolean".into(),
        "u32" | "u64" | "usize" => "integer >= 0".into(),
        "f64" => "number".into(),
        "PathBuf" => "path".into(),
        "Symbol" => "symbol".into(),
        "DateBound" => "date (YYYY-MM-DD or RFC 3339)".into(),
        "Cadence" => "seconds (integer > 0)".into(),
        "[u32; 2]" => "[integer, integer]".into(),
        "SearchParam" => "search range or choices".into(),
        t => match schema.enums.get(t) {
            Some(v) if !v.is_empty() => v.join(" \\| "),
            _ => t.to_owned(),
        },
    }
}

/// The struct a field opens as a section, if it is one.
fn section<'a>(schema: &'a Schema, ty: &str) -> Option<&'a Vec<Field>> {
    schema.structs.get(ty)
}

fn default_text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "(none)".into(),
        Some(Value::String(s)) if s.is_empty() => "\"\"".into(),
        Some(v) => {
            let json = serde_json::to_string(v).expect("YAML value as JSON");
            json.trim_matches('"').replace('|', "\\|")
        }
    }
}

fn rows(schema: &Schema, fields: &[Field], prefix: &str, defaults: &Value, out: &mut Vec<String>) {
    for f in fields {
        let key = format!("{prefix}{}", f.name);
        let value = defaults.get(f.name.as_str());
        match section(schema, &f.ty) {
            Some(sub) => {
                out.push(format!(
                    "| **`{key}`** | section | | {} |",
                    f.doc.replace('|', "\\|")
                ));
                rows(
                    schema,
                    sub,
                    &format!("{key}."),
                    value.unwrap_or(&Value::Null),
                    out,
                );
            }
            None => out.push(format!(
                "| `{key}` | {} | {} | {} |",
                type_name(schema, &f.ty),
                if f.defaulted {
                    default_text(value)
                } else {
                    "**required**".into()
                },
                f.doc.replace('|', "\\|")
            )),
        }
    }
}

fn reference() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = parse_schema(&std::fs::read_to_string(root.join("src/config/schema.rs")).unwrap());
    let loaded = config::parse(REQUIRED, Origin::Embedded, &Overrides::default(), &|_| None)
        .expect("the required keys alone are a valid configuration");
    let defaults = serde_yaml_ng::to_value(&loaded.config).unwrap();
    let mut out = vec![
        "| key | type | default | meaning |".to_owned(),
        "|---|---|---|---|".to_owned(),
    ];
    rows(&schema, &schema.structs["Config"], "", &defaults, &mut out);
    out.join("\n")
}

#[test]
fn readme_configuration_reference_is_generated_from_the_schema() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let (Some(a), Some(b)) = (readme.find(BEGIN), readme.find(END)) else {
        panic!("README.md lacks the markers\n{BEGIN}\n...\n{END}");
    };
    let fresh = format!("{BEGIN}\n{}\n{END}", reference());
    let current = &readme[a..b + END.len()];
    if current == fresh {
        return;
    }
    if std::env::var_os("UPDATE_CONFIG_REFERENCE").is_some() {
        let updated = format!("{}{fresh}{}", &readme[..a], &readme[b + END.len()..]);
        std::fs::write(&path, updated).unwrap();
        return;
    }
    panic!(
        "README.md's configuration reference is stale; run\n  UPDATE_CONFIG_REFERENCE=1 cargo test --test config_reference"
    );
}

#[test]
fn the_reference_lists_every_key_with_its_default() {
    let r = reference();
    for line in [
        "| `workdir` | path | binance-ml-work |",
        "| `data.source_type` | database \\| file \\| synthetic | **required** |",
        "| `data.files.paths` | list of string | [] |",
        "| `data.asset_pairs.target_asset` | symbol | **required** |",
        "| `training.shuffle_buffer` | integer >= 0 |",
        "| **`model.cnn`** | section |",
    ] {
        assert!(r.contains(line), "{line:?} missing:\n{r}");
    }
}
