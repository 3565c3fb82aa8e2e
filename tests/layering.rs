//! The house's layers: no file imports a module of a higher layer, and no files import each
//! other in a circle. Read from the `use` lines and the `crate::`/`super::` paths of `src/`,
//! so a new import that breaks the order fails here with the files and lines named.
//!
//! A module's own facade — `pub use child::Item` in a `mod.rs` — is containment, not a
//! dependency: imports through it are followed to the file that defines the item, and the
//! facade line itself counts only when the facade's own code uses the item.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::path::Path;

/// Top-level modules from the bottom up, read from README "Layout" (its table's second
/// column), so the documented order is the enforced one. A module may import modules of lower
/// layers only; modules sharing a layer may not import each other. `lib.rs` sits on top.
fn readme_layers() -> Vec<Vec<String>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).expect("read README.md");
    let section = readme
        .split("\n## Layout\n")
        .nth(1)
        .expect("README has a \"## Layout\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut layers: Vec<Vec<String>> = section
        .lines()
        .filter(|l| l.starts_with("| ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
        .map(|row| {
            let cell = row.split('|').nth(2).unwrap_or("");
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(|m| m.trim_end_matches(".rs").to_string())
                .collect()
        })
        .collect();
    assert!(
        layers.len() > 5,
        "README \"Layout\" has no layer table ({} rows)",
        layers.len()
    );
    layers.push(vec!["lib".into()]);
    layers
}

/// A module path: `["data", "cache"]` for `src/data/cache.rs`; `[]` is `lib.rs`.
type Module = Vec<String>;

/// One reference from a file to a module, with the line it is on.
#[derive(Debug, Clone)]
struct Edge {
    to: Module,
    line: usize,
    text: String,
}

#[derive(Debug)]
struct SourceFile {
    path: String,
    /// The text with comments and literals blanked.
    code: String,
    uses: Vec<UseStmt>,
    /// Names of the `pub` items it defines.
    items: BTreeSet<String>,
}

impl SourceFile {
    fn new(path: &str, text: &str) -> Self {
        let code = strip(text);
        SourceFile {
            path: format!("src/{path}"),
            uses: use_statements(&code),
            items: items(&code),
            code,
        }
    }

    /// Whether byte `at` lies inside a `use` statement.
    fn in_use(&self, at: usize) -> bool {
        self.uses.iter().any(|u| u.span.contains(&at))
    }

    /// Whether `name` appears as an identifier in the code outside `use` statements.
    fn names(&self, name: &str) -> bool {
        word_starts(&self.code, name)
            .any(|i| !self.in_use(i) && ident_at(&self.code, i).len() == name.len())
    }
}

/// One `use` statement of stripped code.
#[derive(Debug)]
struct UseStmt {
    /// A `pub use` (a re-export).
    public: bool,
    /// From `use` to the `;`.
    span: Range<usize>,
    /// The tree after `use`.
    tree: String,
}

/// Blanks comments, string and char literals (keeping newlines), so only code is scanned.
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied().unwrap_or(0);
        if c == b'/' && next == b'/' {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if c == b'/' && next == b'*' {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if c == b'r' && (next == b'#' || next == b'"') && !ident_byte(prev(b, i)) {
            // Raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            while b.get(j) == Some(&b'#') {
                j += 1;
            }
            if b.get(j) != Some(&b'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            out.push(b'"');
            i = j + 1;
            while i < b.len() && !b[i..].starts_with(&close) {
                blank(&mut out, b[i]);
                i += 1;
            }
            out.extend(std::iter::repeat_n(b' ', close.len().min(b.len() - i)));
            i += close.len();
        } else if c == b'"' {
            out.push(b'"');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                let step = if b[i] == b'\\' { 2 } else { 1 };
                for k in 0..step {
                    if let Some(&x) = b.get(i + k) {
                        blank(&mut out, x);
                    }
                }
                i += step;
            }
            out.push(b'"');
            i += 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}'), not a lifetime ('a).
            let end = if next == b'\\' {
                b[i + 2..]
                    .iter()
                    .position(|&x| x == b'\'')
                    .map(|p| i + 2 + p)
            } else if b.get(i + 2) == Some(&b'\'') {
                Some(i + 2)
            } else {
                // Multi-byte UTF-8 char literal.
                let s = &src[i + 1..];
                s.chars()
                    .next()
                    .filter(|ch| ch.len_utf8() > 1 && s[ch.len_utf8()..].starts_with('\''))
                    .map(|ch| i + 1 + ch.len_utf8())
            };
            match end {
                Some(e) => {
                    out.push(b'\'');
                    out.extend(std::iter::repeat_n(b' ', e - i - 1));
                    out.push(b'\'');
                    i = e + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn prev(b: &[u8], i: usize) -> u8 {
    if i == 0 { b' ' } else { b[i - 1] }
}

fn ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// The paths a `use` tree names: `a::{b, c::{d, e as f}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand_tree(tree: &str) -> Vec<Vec<String>> {
    // Keep a space only between two words (`A as B`), drop it around `::`, `{`, `}` and `,`.
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut tree = String::new();
    for w in words {
        let joins = tree.ends_with(|c: char| c.is_alphanumeric() || c == '_')
            && w.starts_with(|c: char| c.is_alphanumeric() || c == '_');
        if joins {
            tree.push(' ');
        }
        tree.push_str(w);
    }
    let mut out = Vec::new();
    expand_into(&[], &tree, &mut out);
    out
}

fn expand_into(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
    for item in split_top(tree) {
        if item.is_empty() {
            continue;
        }
        if let Some(open) = item.find('{') {
            let head = item[..open].trim_end_matches("::");
            let mut p = prefix.to_vec();
            p.extend(head.split("::").filter(|s| !s.is_empty()).map(String::from));
            expand_into(&p, &item[open + 1..item.len() - 1], out);
        } else {
            let item = item.split(" as ").next().unwrap_or(item);
            let mut p = prefix.to_vec();
            p.extend(item.split("::").map(String::from));
            out.push(p);
        }
    }
}

/// Splits on commas outside braces.
fn split_top(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// Offsets where `pat` occurs with no identifier byte before it.
fn word_starts<'a>(code: &'a str, pat: &'a str) -> impl Iterator<Item = usize> + 'a {
    code.match_indices(pat)
        .map(|(i, _)| i)
        .filter(|&i| !ident_byte(prev(code.as_bytes(), i)))
}

/// The identifier (letters, digits, `_`) starting at byte `at`.
fn ident_at(code: &str, at: usize) -> &str {
    let rest = &code[at..];
    &rest[..rest
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(rest.len())]
}

/// The `use` statements of stripped code.
fn use_statements(code: &str) -> Vec<UseStmt> {
    let b = code.as_bytes();
    let mut out: Vec<UseStmt> = Vec::new();
    for i in word_starts(code, "use") {
        let after_last = out.last().is_none_or(|u| i >= u.span.end);
        if !after_last || !b.get(i + 3).is_some_and(|c| c.is_ascii_whitespace()) {
            continue;
        }
        let Some(end) = code[i..].find(';') else {
            break;
        };
        let before = code[..i].trim_end();
        let public = before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
        out.push(UseStmt {
            public,
            span: i..i + end,
            tree: code[i + 3..i + end].to_string(),
        });
    }
    out
}

/// Inline paths such as `crate::data::DataError` outside `use` statements: (offset, segments).
fn inline_paths(file: &SourceFile, roots: &[&str]) -> Vec<(usize, Vec<String>)> {
    let (code, b) = (&file.code, file.code.as_bytes());
    let mut out = Vec::new();
    for root in roots {
        let pat = format!("{root}::");
        for i in word_starts(code, &pat) {
            if prev(b, i) == b'$' || prev(b, i) == b':' || file.in_use(i) {
                continue;
            }
            let mut j = i;
            while j < b.len()
                && (ident_byte(b[j])
                    || (b[j] == b':'
                        && b.get(j + 1) == Some(&b':')
                        && b.get(j + 2).is_some_and(|&c| ident_byte(c))))
            {
                j += if b[j] == b':' { 2 } else { 1 };
            }
            out.push((i, code[i..j].split("::").map(String::from).collect()));
        }
    }
    out
}

/// The import graph of a source tree given as (path under `src/`, text) pairs.
struct Graph {
    files: BTreeMap<Module, SourceFile>,
    edges: BTreeMap<Module, Vec<Edge>>,
}

fn module_of(path: &str) -> Module {
    let p = path.trim_end_matches(".rs");
    let mut m: Module = p.split('/').map(String::from).collect();
    match m.last().map(String::as_str) {
        Some("mod") => {
            m.pop();
        }
        Some("lib") if m.len() == 1 => m.clear(),
        _ => {}
    }
    m
}

fn line_of(code: &str, at: usize) -> usize {
    code[..at].matches('\n').count() + 1
}

impl Graph {
    fn build(sources: &[(String, String)]) -> Graph {
        let mut files = BTreeMap::new();
        for (path, text) in sources {
            files.insert(module_of(path), SourceFile::new(path, text));
        }
        let mut g = Graph {
            files,
            edges: BTreeMap::new(),
        };
        let modules: Vec<Module> = g.files.keys().cloned().collect();
        for m in modules {
            let edges = g.edges_of(&m);
            g.edges.insert(m, edges);
        }
        g
    }

    fn is_module(&self, m: &[String]) -> bool {
        self.files.contains_key(m)
    }

    /// Where a path written in module `from` leads: the file defining what it names.
    fn resolve(&self, from: &Module, path: &[String], depth: usize) -> Option<Module> {
        let (mut full, rest): (Module, &[String]) = match path.first()?.as_str() {
            "crate" | "binance_ml" => (vec![], &path[1..]),
            "self" => (from.clone(), &path[1..]),
            "super" => {
                let mut base = from.clone();
                let mut rest = path;
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop();
                    rest = &rest[1..];
                }
                (base, rest)
            }
            child => {
                let mut c = from.clone();
                c.push(child.to_string());
                if !self.is_module(&c) {
                    return None;
                }
                (from.clone(), path)
            }
        };
        full.extend(
            rest.iter()
                .filter(|s| s.as_str() != "*" && s.as_str() != "self")
                .cloned(),
        );
        let n = (0..=full.len())
            .rev()
            .find(|&n| self.is_module(&full[..n]))?;
        let module = full[..n].to_vec();
        if depth < 8
            && let Some(name) = full.get(n)
            && let Some(target) = self.reexport(&module, name, depth)
        {
            return Some(target);
        }
        Some(module)
    }

    /// The file an item re-exported by `module` under `name` comes from, if it is one.
    fn reexport(&self, module: &Module, name: &str, depth: usize) -> Option<Module> {
        let file = &self.files[module];
        for u in file.uses.iter().filter(|u| u.public) {
            for path in expand_tree(&u.tree) {
                let last = path.last()?;
                if last == name {
                    return self.resolve(module, &path, depth + 1);
                }
                if last == "*"
                    && let Some(target) = self.resolve(module, &path, depth + 1)
                    && self.files[&target].items.contains(name)
                {
                    return Some(target);
                }
            }
        }
        None
    }

    fn edges_of(&self, m: &Module) -> Vec<Edge> {
        let file = &self.files[m];
        let roots: &[&str] = if m.as_slice() == ["main"] {
            &["binance_ml"]
        } else {
            &["crate", "super", "self"]
        };
        let base: Module = if m.as_slice() == ["main"] {
            vec![]
        } else {
            m.clone()
        };
        let inline = inline_modules(&file.code);
        // Paths inside `mod tests { .. }` are relative to that inline module.
        let from_at = |at: usize| -> Module {
            let mut from = base.clone();
            from.extend(
                inline
                    .iter()
                    .filter(|(_, s, e)| at > *s && at < *e)
                    .map(|(n, _, _)| n.clone()),
            );
            from
        };
        let mut edges = Vec::new();
        let mut push = |to: Option<Module>, at: usize, text: String| {
            if let Some(to) = to.filter(|t| t != m) {
                edges.push(Edge {
                    to,
                    line: line_of(&file.code, at),
                    text,
                });
            }
        };
        for u in &file.uses {
            let at = u.span.start;
            for path in expand_tree(&u.tree) {
                let to = self.resolve(&from_at(at), &path, 0);
                // A facade re-export of a descendant counts only if this file's code uses it.
                if u.public && to.as_ref().is_some_and(|t| t.starts_with(m)) {
                    let name = path.last().cloned().unwrap_or_default();
                    let used = if name == "*" {
                        let target = to.clone().unwrap_or_default();
                        self.files[&target].items.iter().any(|i| file.names(i))
                    } else {
                        file.names(&name)
                    };
                    if !used {
                        continue;
                    }
                }
                push(to, at, path.join("::"));
            }
        }
        for (at, path) in inline_paths(file, roots) {
            push(self.resolve(&from_at(at), &path, 0), at, path.join("::"));
        }
        edges
    }

    /// Groups of files that import each other, directly or in a circle (Tarjan).
    fn cycles(&self) -> Vec<Vec<Module>> {
        struct Tarjan<'a> {
            g: &'a Graph,
            index: BTreeMap<Module, usize>,
            low: BTreeMap<Module, usize>,
            stack: Vec<Module>,
            on: BTreeSet<Module>,
            out: Vec<Vec<Module>>,
        }
        impl Tarjan<'_> {
            fn visit(&mut self, v: &Module) {
                let i = self.index.len();
                self.index.insert(v.clone(), i);
                self.low.insert(v.clone(), i);
                self.stack.push(v.clone());
                self.on.insert(v.clone());
                let targets: BTreeSet<Module> =
                    self.g.edges[v].iter().map(|e| e.to.clone()).collect();
                for w in &targets {
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let l = self.low[v].min(self.low[w]);
                        self.low.insert(v.clone(), l);
                    } else if self.on.contains(w) {
                        let l = self.low[v].min(self.index[w]);
                        self.low.insert(v.clone(), l);
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = self.stack.pop() {
                        self.on.remove(&w);
                        let done = &w == v;
                        comp.push(w);
                        if done {
                            break;
                        }
                    }
                    if comp.len() > 1 {
                        comp.sort();
                        self.out.push(comp);
                    }
                }
            }
        }
        let mut t = Tarjan {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on: BTreeSet::new(),
            out: Vec::new(),
        };
        for m in self.files.keys() {
            if !t.index.contains_key(m) {
                t.visit(m);
            }
        }
        t.out
    }

    /// Every problem found: circles (with the imports that close them) and upward imports.
    fn problems(&self, layers: &[Vec<String>]) -> Vec<String> {
        let rank = |m: &Module| -> Option<usize> {
            let top = m.first().map(String::as_str).unwrap_or("lib");
            layers.iter().position(|l| l.iter().any(|x| x == top))
        };
        let mut out = Vec::new();
        for m in self.files.keys() {
            if rank(m).is_none() {
                out.push(format!(
                    "{}: module `{}` is in no layer; give it a layer in README \"Layout\"",
                    self.files[m].path, m[0]
                ));
            }
        }
        for comp in self.cycles() {
            let mut msg = String::from("these files import each other in a circle:");
            for a in &comp {
                for e in self.edges[a].iter().filter(|e| comp.contains(&e.to)) {
                    msg += &format!(
                        "\n    {}:{} uses {} ({})",
                        self.files[a].path, e.line, e.text, self.files[&e.to].path
                    );
                }
            }
            out.push(msg);
        }
        for (m, edges) in &self.edges {
            for e in edges {
                let (Some(a), Some(b)) = (rank(m), rank(&e.to)) else {
                    continue;
                };
                if m.first() != e.to.first() && b >= a {
                    let what = if a == b {
                        "a module of the same layer"
                    } else {
                        "a module of a higher layer"
                    };
                    out.push(format!(
                        "{}:{} uses {}: {what} ({})",
                        self.files[m].path, e.line, e.text, self.files[&e.to].path
                    ));
                }
            }
        }
        out
    }
}

/// Inline modules (`mod tests { .. }`): name and the byte span of their braces.
fn inline_modules(code: &str) -> Vec<(String, usize, usize)> {
    let b = code.as_bytes();
    let mut out = Vec::new();
    for i in word_starts(code, "mod ") {
        let rest = code[i + 4..].trim_start();
        let name = ident_at(rest, 0).to_string();
        let after = rest[name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let open = code.len() - after.len();
        let mut depth = 0;
        let close = (open..b.len()).find(|&j| {
            match b[j] {
                b'{' => depth += 1,
                b'}' => depth -= 1,
                _ => {}
            }
            depth == 0
        });
        out.push((name, open, close.unwrap_or(b.len())));
    }
    out
}

/// Top-level item names a file defines (a cheap scan: enough to follow glob re-exports).
fn items(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for kw in ["struct", "enum", "fn", "type", "const", "static", "trait"] {
        let pat = format!("pub {kw} ");
        for i in word_starts(code, &pat) {
            out.insert(ident_at(code, i + pat.len()).to_string());
        }
    }
    out
}

fn read_tree(dir: &Path, rel: &str, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read src/")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .expect("utf-8 file name")
            .to_string();
        let rel = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        if p.is_dir() {
            read_tree(&p, &rel, out);
        } else if name.ends_with(".rs") {
            out.push((rel, std::fs::read_to_string(&p).expect("read source")));
        }
    }
}

#[test]
fn src_has_no_circles_and_no_upward_imports() {
    let mut sources = Vec::new();
    read_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        "",
        &mut sources,
    );
    assert!(
        sources.len() > 50,
        "found only {} files under src/",
        sources.len()
    );
    let g = Graph::build(&sources);
    let edges: usize = g.edges.values().map(Vec::len).sum();
    assert!(
        edges > 300,
        "found only {edges} imports: the scanner is broken"
    );
    let problems = g.problems(&readme_layers());
    assert!(
        problems.is_empty(),
        "{} layering problems:\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

fn tree(files: &[(&str, &str)]) -> Graph {
    Graph::build(
        &files
            .iter()
            .map(|(p, s)| (p.to_string(), s.to_string()))
            .collect::<Vec<_>>(),
    )
}

fn toy_layers() -> Vec<Vec<String>> {
    [&["low"][..], &["mid", "side"], &["high"], &["lib"]]
        .iter()
        .map(|l| l.iter().map(|m| m.to_string()).collect())
        .collect()
}

#[test]
fn scanner_finds_an_upward_import_a_sibling_import_and_a_circle() {
    let g = tree(&[
        (
            "lib.rs",
            "pub mod low; pub mod mid; pub mod side; pub mod high;",
        ),
        ("low.rs", "pub fn f() -> crate::high::T { todo!() }"),
        ("mid/mod.rs", "mod a; mod b; pub use a::A;"),
        ("mid/a.rs", "use super::b::B; pub struct A;"),
        ("mid/b.rs", "use super::a::{A, self}; pub struct B;"),
        ("side.rs", "use crate::mid::A;"),
        (
            "high.rs",
            "pub struct T; use crate::{low::f, mid::{self, A as Z}};",
        ),
    ]);
    let p = g.problems(&toy_layers());
    let text = p.join("\n");
    assert!(
        text.contains("src/low.rs:1 uses crate::high::T: a module of a higher layer (src/high.rs)"),
        "{text}"
    );
    assert!(
        text.contains(
            "src/side.rs:1 uses crate::mid::A: a module of the same layer (src/mid/a.rs)"
        ),
        "{text}"
    );
    assert!(
        text.contains("src/mid/a.rs:1 uses super::b::B (src/mid/b.rs)"),
        "{text}"
    );
    assert!(
        text.contains("src/mid/b.rs:1 uses super::a::A (src/mid/a.rs)"),
        "{text}"
    );
    // low -> high -> low is a circle as well.
    assert_eq!(p.len(), 4, "{text}");
}

#[test]
fn scanner_follows_facades_and_ignores_comments_strings_and_chars() {
    let g = tree(&[
        ("lib.rs", "pub mod low; pub mod high; pub use low::Item;"),
        (
            "low/mod.rs",
            "mod inner; mod other; pub use inner::*; pub use other::Other;\npub fn uses_other(_: Other) {}",
        ),
        (
            "low/inner.rs",
            "pub struct Item; // crate::high::T\nconst S: &str = \"crate::high::T\"; const C: char = '\"'; const R: &str = r#\"crate::high\"#;",
        ),
        ("low/other.rs", "pub struct Other;"),
        ("high.rs", "use crate::Item; fn g(_: crate::low::Other) {}"),
    ]);
    let edges = |m: &[&str]| -> Vec<String> {
        let m: Module = m.iter().map(|s| s.to_string()).collect();
        g.edges[&m].iter().map(|e| e.to.join("::")).collect()
    };
    assert!(
        g.problems(&toy_layers()).is_empty(),
        "{:?}",
        g.problems(&toy_layers())
    );
    assert_eq!(edges(&["high"]), vec!["low::inner", "low::other"]);
    // The facade uses `Other` itself, so it depends on `other`; `inner` is only re-exported.
    assert_eq!(edges(&["low"]), vec!["low::other"]);
    assert!(edges(&["low", "inner"]).is_empty());
    assert!(edges(&[]).is_empty());
}
