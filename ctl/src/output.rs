//! Output formats shared by the verbs: kubectl's tables (normal and wide), ages, and
//! `-o yaml|json|name`.

use berth_api::ResourceType;
use serde_json::{Value, json};

use super::{CtlError, kind_ref, str_at};
use berth_api::table;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Wide,
    Yaml,
    Json,
    Name,
}

pub use berth_api::table::{
    age, human_duration, joined, node_status, pairs, pod_summary, selector_text,
};

/// The column headers of `rt`'s table.
pub fn header(rt: &ResourceType, wide: bool, namespaces: bool) -> Vec<String> {
    let mut columns: Vec<String> = Vec::new();
    if namespaces && rt.namespaced {
        columns.push("NAMESPACE".to_owned());
    }
    columns.extend(
        table::columns(rt)
            .into_iter()
            .filter(|c| wide || !c.wide)
            .map(|c| c.name.to_ascii_uppercase()),
    );
    columns
}

/// One table row for `item`, matching [`header`].
pub fn row(rt: &ResourceType, item: &Value, wide: bool, namespaces: bool) -> Vec<String> {
    let mut cells = Vec::new();
    if namespaces && rt.namespaced {
        cells.push(str_at(item, "/metadata/namespace").to_owned());
    }
    cells.extend(
        table::columns(rt)
            .into_iter()
            .zip(table::cells(rt, item))
            .filter(|(column, _)| wide || !column.wide)
            .map(|(_, cell)| cell),
    );
    cells
}

/// Column widths that fit every row.
pub fn widths(rows: &[Vec<String>]) -> Vec<usize> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    (0..columns)
        .map(|i| {
            rows.iter()
                .map(|r| r.get(i).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect()
}

/// One aligned line, three spaces between columns as kubectl's tabwriter does.
pub fn line(cells: &[String], widths: &[usize]) -> String {
    cells
        .iter()
        .enumerate()
        .map(|(i, cell)| {
            let width = widths.get(i).copied().unwrap_or(0);
            format!("{cell:<width$}")
        })
        .collect::<Vec<_>>()
        .join("   ")
        .trim_end()
        .to_owned()
}

/// A whole aligned table, header first.
pub fn table(rows: &[Vec<String>]) -> String {
    let widths = widths(rows);
    rows.iter()
        .map(|r| line(r, &widths))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `deployment.apps/web`, as `-o name` prints it.
pub fn name_of(rt: &ResourceType, item: &Value) -> String {
    format!("{}/{}", kind_ref(rt), str_at(item, "/metadata/name"))
}

/// One object or a `kind: List` of them, as JSON or YAML.
pub fn serialize(value: &Value, format: Format) -> Result<String, CtlError> {
    match format {
        Format::Yaml => serde_norway::to_string(value)
            .map(|s| s.trim_end().to_owned())
            .map_err(|e| CtlError::Io(format!("encoding YAML: {e}"))),
        _ => serde_json::to_string_pretty(value)
            .map_err(|e| CtlError::Io(format!("encoding JSON: {e}"))),
    }
}

/// kubectl's generic list: `{"apiVersion": "v1", "kind": "List", "items": [...]}`.
pub fn list_of(items: Vec<Value>, resource_version: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "List",
        "metadata": {"resourceVersion": resource_version},
        "items": items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let rows = vec![
            vec!["NAME".to_owned(), "READY".to_owned()],
            vec!["a-long-name".to_owned(), "1/1".to_owned()],
        ];
        assert_eq!(table(&rows), "NAME          READY\na-long-name   1/1");
    }
}
