//! `cargo xtask cycles`: import cycles between the modules of every crate of the
//! workspace. At every level of a crate's module tree, sibling modules form a graph: `a`
//! depends on `b` when anything in `a` (or below it) names something in `b` (or below it)
//! through `crate::`, `super::` or `self::` paths, in `use` items or anywhere in code. A
//! strongly connected set of siblings (Tarjan) is a cycle: the modules cannot be
//! understood, or split into crates, one at a time. A module using its parent or its
//! children is not a cycle (that is what `super::` and `mod` are for), and `#[cfg(test)]`
//! code is left out, as cargo-modules leaves it out by default.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use syn::visit::Visit;

use crate::util::workspace_root;

#[derive(clap::Args)]
pub struct Args {}

/// A module by its path below the crate root (empty for the root).
type ModulePath = Vec<String>;

/// One place where a module names another module's item.
#[derive(Debug, Clone)]
struct Reference {
    from: ModulePath,
    /// The named path, absolute from the crate root.
    target: Vec<String>,
    file: PathBuf,
    line: usize,
}

/// Where a module names another: file, line and the line's text.
pub type Place = (PathBuf, usize, String);

/// A cycle among the sibling modules below `parent`, with the references that make it.
#[derive(Debug)]
pub struct Cycle {
    pub krate: String,
    pub parent: ModulePath,
    pub modules: Vec<String>,
    /// (from, to) → where `from` names `to`.
    pub edges: BTreeMap<(String, String), Vec<Place>>,
}

impl fmt::Display for Cycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parent = if self.parent.is_empty() {
            "the crate root".to_owned()
        } else {
            format!("crate::{}", self.parent.join("::"))
        };
        writeln!(
            f,
            "{}: modules {} below {parent} form a cycle:",
            self.krate,
            self.modules.join(", ")
        )?;
        for ((from, to), places) in &self.edges {
            writeln!(f, "  {from} -> {to}:")?;
            for (file, line, text) in places.iter().take(3) {
                writeln!(f, "    {}:{line}: {text}", file.display())?;
            }
            if places.len() > 3 {
                writeln!(f, "    (and {} more)", places.len() - 3)?;
            }
        }
        Ok(())
    }
}

pub fn run(_args: &Args) -> anyhow::Result<()> {
    let cycles = workspace_cycles()?;
    for cycle in &cycles {
        println!("{cycle}");
    }
    if !cycles.is_empty() {
        bail!("{} module cycle(s) in the workspace", cycles.len());
    }
    println!("cycles: no module cycles in the workspace");
    Ok(())
}

/// Every cycle in every target (library, binaries, tests, benches) of every workspace crate.
pub fn workspace_cycles() -> anyhow::Result<Vec<Cycle>> {
    let root = workspace_root();
    let metadata = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(&root)
        .output()
        .context("running cargo metadata")?;
    if !metadata.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&metadata.stderr)
        );
    }
    let metadata: serde_json::Value =
        serde_json::from_slice(&metadata.stdout).context("cargo metadata's output")?;
    let mut cycles = Vec::new();
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let name = package["name"].as_str().unwrap_or_default();
        for target in package["targets"].as_array().into_iter().flatten() {
            let kinds: Vec<&str> = target["kind"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(serde_json::Value::as_str)
                .collect();
            if kinds.contains(&"custom-build") {
                continue;
            }
            let Some(src) = target["src_path"].as_str() else {
                continue;
            };
            let krate = format!(
                "{name} ({} {})",
                kinds.join(","),
                target["name"].as_str().unwrap_or_default()
            );
            let src = Path::new(src);
            let shown = src.strip_prefix(&root).unwrap_or(src);
            cycles.extend(
                crate_cycles(&krate, src, &root)
                    .with_context(|| format!("reading {}", shown.display()))?,
            );
        }
    }
    Ok(cycles)
}

/// The cycles of the crate whose root file is `root_file`; files are shown relative to
/// `shown_from`.
pub fn crate_cycles(
    krate: &str,
    root_file: &Path,
    shown_from: &Path,
) -> anyhow::Result<Vec<Cycle>> {
    let mut modules = BTreeSet::from([ModulePath::new()]);
    let mut references = Vec::new();
    let dir = root_file.parent().unwrap_or(Path::new("."));
    read_module(
        root_file,
        &ModulePath::new(),
        dir,
        &mut modules,
        &mut references,
    )?;
    // (parent, from child, to child) → references
    let mut levels: BTreeMap<ModulePath, BTreeMap<(String, String), Vec<&Reference>>> =
        BTreeMap::new();
    for reference in &references {
        let Some(to) = longest_module(&modules, &reference.target) else {
            continue;
        };
        let from = &reference.from;
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if common == from.len() || common == to.len() {
            continue;
        }
        levels
            .entry(from[..common].to_vec())
            .or_default()
            .entry((from[common].clone(), to[common].clone()))
            .or_default()
            .push(reference);
    }
    let mut cycles = Vec::new();
    for (parent, edges) in levels {
        let graph: BTreeMap<&str, BTreeSet<&str>> =
            edges.keys().fold(BTreeMap::new(), |mut graph, (a, b)| {
                graph.entry(a.as_str()).or_default().insert(b.as_str());
                graph.entry(b.as_str()).or_default();
                graph
            });
        for component in strongly_connected(&graph) {
            if component.len() < 2 {
                continue;
            }
            let members: BTreeSet<&str> = component.iter().copied().collect();
            let edges = edges
                .iter()
                .filter(|((a, b), _)| members.contains(a.as_str()) && members.contains(b.as_str()))
                .map(|(edge, places)| {
                    let places = places
                        .iter()
                        .map(|r| {
                            let text = std::fs::read_to_string(&r.file)
                                .ok()
                                .and_then(|t| {
                                    t.lines().nth(r.line - 1).map(|l| l.trim().to_owned())
                                })
                                .unwrap_or_default();
                            let file = r.file.strip_prefix(shown_from).unwrap_or(&r.file);
                            (file.to_path_buf(), r.line, text)
                        })
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    (edge.clone(), places)
                })
                .collect();
            cycles.push(Cycle {
                krate: krate.to_owned(),
                parent: parent.clone(),
                modules: members.iter().map(|m| (*m).to_owned()).collect(),
                edges,
            });
        }
    }
    Ok(cycles)
}

/// The longest prefix of `path` that names a module of the crate.
fn longest_module(modules: &BTreeSet<ModulePath>, path: &[String]) -> Option<ModulePath> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| modules.contains(prefix))
}

/// Reads one module's file: its submodules (recursively) and the paths it names.
/// `dir` is where its `mod x;` files live.
fn read_module(
    file: &Path,
    module: &ModulePath,
    dir: &Path,
    modules: &mut BTreeSet<ModulePath>,
    references: &mut Vec<Reference>,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let parsed = syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
    read_items(&parsed.items, file, module, dir, modules, references)
}

fn read_items(
    items: &[syn::Item],
    file: &Path,
    module: &ModulePath,
    dir: &Path,
    modules: &mut BTreeSet<ModulePath>,
    references: &mut Vec<Reference>,
) -> anyhow::Result<()> {
    for item in items {
        if let syn::Item::Mod(child) = item {
            if is_cfg_test(&child.attrs) {
                continue;
            }
            let name = child.ident.to_string();
            let mut path = module.clone();
            path.push(name.clone());
            modules.insert(path.clone());
            match &child.content {
                Some((_, items)) => {
                    read_items(items, file, &path, &dir.join(&name), modules, references)?;
                }
                None => {
                    let (child_file, child_dir) = module_file(dir, &name, &child.attrs)?;
                    read_module(&child_file, &path, &child_dir, modules, references)?;
                }
            }
            continue;
        }
        if item_attrs(item).is_some_and(is_cfg_test) {
            continue;
        }
        let mut collector = Collector {
            module,
            file,
            references,
        };
        collector.visit_item(item);
    }
    Ok(())
}

/// The file of `mod name;` declared in a module whose submodules live in `dir`, and the
/// directory of its own submodules.
fn module_file(
    dir: &Path,
    name: &str,
    attrs: &[syn::Attribute],
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let explicit = attrs.iter().find_map(|attr| match &attr.meta {
        syn::Meta::NameValue(nv) if nv.path.is_ident("path") => match &nv.value {
            syn::Expr::Lit(syn::ExprLit {
                lit: syn::Lit::Str(s),
                ..
            }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    });
    if let Some(explicit) = explicit {
        let file = dir.join(explicit);
        let child_dir = file.parent().unwrap_or(dir).to_path_buf();
        return Ok((file, child_dir));
    }
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        return Ok((flat, dir.join(name)));
    }
    let nested = dir.join(name).join("mod.rs");
    if nested.exists() {
        return Ok((nested, dir.join(name)));
    }
    bail!(
        "module {name}: neither {} nor {}",
        flat.display(),
        nested.display()
    )
}

fn item_attrs(item: &syn::Item) -> Option<&[syn::Attribute]> {
    use syn::Item;
    Some(match item {
        Item::Const(i) => &i.attrs,
        Item::Enum(i) => &i.attrs,
        Item::Fn(i) => &i.attrs,
        Item::Impl(i) => &i.attrs,
        Item::Macro(i) => &i.attrs,
        Item::Static(i) => &i.attrs,
        Item::Struct(i) => &i.attrs,
        Item::Trait(i) => &i.attrs,
        Item::Type(i) => &i.attrs,
        Item::Union(i) => &i.attrs,
        Item::Use(i) => &i.attrs,
        _ => return None,
    })
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|attr| {
        attr.path().is_ident("cfg")
            && attr
                .parse_args::<syn::Ident>()
                .is_ok_and(|ident| ident == "test")
    })
}

/// Collects the module-relative paths an item names.
struct Collector<'a> {
    module: &'a ModulePath,
    file: &'a Path,
    references: &'a mut Vec<Reference>,
}

impl Collector<'_> {
    fn record(&mut self, segments: &[String], line: usize) {
        let Some(first) = segments.first() else {
            return;
        };
        let target = match first.as_str() {
            "crate" => segments[1..].to_vec(),
            "self" => [self.module.as_slice(), &segments[1..]].concat(),
            "super" => {
                let ups = segments.iter().take_while(|s| *s == "super").count();
                let Some(base) = self.module.len().checked_sub(ups) else {
                    return;
                };
                [&self.module[..base], &segments[ups..]].concat()
            }
            _ => return,
        };
        self.references.push(Reference {
            from: self.module.clone(),
            target,
            file: self.file.to_path_buf(),
            line,
        });
    }

    fn use_tree(&mut self, tree: &syn::UseTree, prefix: &mut Vec<String>) {
        match tree {
            syn::UseTree::Path(path) => {
                prefix.push(path.ident.to_string());
                self.use_tree(&path.tree, prefix);
                prefix.pop();
            }
            syn::UseTree::Name(name) => {
                prefix.push(name.ident.to_string());
                self.record(&prefix.clone(), name.ident.span().start().line);
                prefix.pop();
            }
            syn::UseTree::Rename(rename) => {
                prefix.push(rename.ident.to_string());
                self.record(&prefix.clone(), rename.ident.span().start().line);
                prefix.pop();
            }
            syn::UseTree::Glob(glob) => {
                self.record(&prefix.clone(), glob.star_token.span.start().line);
            }
            syn::UseTree::Group(group) => {
                for tree in &group.items {
                    self.use_tree(tree, prefix);
                }
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        self.use_tree(&item.tree, &mut Vec::new());
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = path.segments.first() {
            self.record(&segments, first.ident.span().start().line);
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {}
}

/// Tarjan's strongly connected components, each in the graph's key order.
fn strongly_connected<'a>(graph: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    struct State<'a> {
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        components: Vec<Vec<&'a str>>,
    }
    fn connect<'a>(node: &'a str, graph: &BTreeMap<&'a str, BTreeSet<&'a str>>, s: &mut State<'a>) {
        let n = s.index.len();
        s.index.insert(node, n);
        s.low.insert(node, n);
        s.stack.push(node);
        s.on_stack.insert(node);
        for &next in graph.get(node).into_iter().flatten() {
            if !s.index.contains_key(next) {
                connect(next, graph, s);
                let low = s.low[node].min(s.low[next]);
                s.low.insert(node, low);
            } else if s.on_stack.contains(next) {
                let low = s.low[node].min(s.index[next]);
                s.low.insert(node, low);
            }
        }
        if s.low[node] == s.index[node] {
            let mut component = Vec::new();
            while let Some(top) = s.stack.pop() {
                s.on_stack.remove(top);
                component.push(top);
                if top == node {
                    break;
                }
            }
            component.sort_unstable();
            s.components.push(component);
        }
    }
    let mut state = State {
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for &node in graph.keys() {
        if !state.index.contains_key(node) {
            connect(node, graph, &mut state);
        }
    }
    state.components
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crate made of `(file, text)` in a fresh directory; its root is `lib.rs`.
    fn cycles_of(files: &[(&str, &str)]) -> Vec<Cycle> {
        let dir = tempfile::tempdir().expect("tempdir");
        for (file, text) in files {
            let path = dir.path().join(file);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        crate_cycles("hand-made", &dir.path().join("lib.rs"), dir.path()).expect("parses")
    }

    #[test]
    fn finds_a_cycle_between_two_modules_with_the_lines_that_make_it() {
        let cycles = cycles_of(&[
            ("lib.rs", "mod a;\nmod b;\n"),
            ("a.rs", "use crate::b::B;\npub struct A;\n"),
            (
                "b.rs",
                "pub struct B;\nfn f() -> super::a::A { super::a::A }\n",
            ),
        ]);
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        let cycle = &cycles[0];
        assert_eq!(cycle.modules, ["a", "b"]);
        assert!(cycle.parent.is_empty());
        let a_to_b = &cycle.edges[&("a".to_owned(), "b".to_owned())];
        assert_eq!(a_to_b[0].0, Path::new("a.rs"));
        assert_eq!(a_to_b[0].1, 1);
        assert_eq!(a_to_b[0].2, "use crate::b::B;");
        let b_to_a = &cycle.edges[&("b".to_owned(), "a".to_owned())];
        assert_eq!(b_to_a[0].1, 2);
        let shown = cycle.to_string();
        assert!(
            shown.contains("a -> b") && shown.contains("b -> a"),
            "{shown}"
        );
    }

    #[test]
    fn finds_cycles_of_three_below_nested_and_inline_modules() {
        let cycles = cycles_of(&[
            ("lib.rs", "mod outer;\n"),
            (
                "outer/mod.rs",
                "mod x;\nmod y;\nmod z { pub fn z() { super::x::x() } }\n",
            ),
            ("outer/x.rs", "use super::y::{self, Y};\npub fn x() {}\n"),
            ("outer/y.rs", "pub struct Y;\npub use crate::outer::z::z;\n"),
        ]);
        assert_eq!(cycles.len(), 1, "{cycles:?}");
        assert_eq!(cycles[0].parent, ["outer"]);
        assert_eq!(cycles[0].modules, ["x", "y", "z"]);
    }

    #[test]
    fn parents_children_one_way_uses_and_test_code_are_not_cycles() {
        let cycles = cycles_of(&[
            (
                "lib.rs",
                "mod a;\nmod b;\npub use a::A;\npub struct Root;\n\
                 #[cfg(test)]\nmod tests { use crate::{a::A, b::B}; }\n",
            ),
            (
                "a.rs",
                "use crate::Root;\nuse crate::b::B;\npub struct A(B);\nmod inner { use super::A; }\n",
            ),
            (
                "b.rs",
                "pub struct B;\n#[cfg(test)]\nfn t() { crate::a::A(B); }\n\
                 #[cfg(test)]\nmod tests { use crate::a::A; }\n",
            ),
        ]);
        assert!(cycles.is_empty(), "{cycles:?}");
    }

    #[test]
    fn tarjan_separates_components() {
        let graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::from([
            ("a", BTreeSet::from(["b"])),
            ("b", BTreeSet::from(["a", "c"])),
            ("c", BTreeSet::from(["d"])),
            ("d", BTreeSet::from(["c"])),
            ("e", BTreeSet::from(["a"])),
        ]);
        let mut components = strongly_connected(&graph);
        components.sort();
        assert_eq!(components, [vec!["a", "b"], vec!["c", "d"], vec!["e"]]);
    }
}
