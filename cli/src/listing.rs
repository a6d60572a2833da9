//! How `weft network ls` (and `prune`) choose and print networks, the way
//! `docker network ls` does: `--filter KEY=VALUE` and `--format`.
//!
//! # Filters
//!
//! `driver=D`, `scope=local|cluster`, `name=TEXT` (part of the name),
//! `id=PREFIX`, `label=KEY` or `label=KEY=VALUE`, `label!=KEY[=VALUE]`
//! (has no such label), `dangling=true|false` (no endpoints; `prune` uses
//! it). As in Docker, several filters of one key match if any matches
//! (`label!`: if none of its labels is there); filters of different keys
//! must all match. An unknown key is an error that lists the known ones.
//!
//! # Formats
//!
//! `table` (the default), `json` (the API's objects, one array), or a
//! template in Go's syntax for the fields Docker names: `{{.Name}}`,
//! `{{.ID}}`, `{{.Driver}}`, `{{.Scope}}`, `{{.Subnet}}`, `{{.Internal}}`,
//! `{{.IPv6}}`, `{{.Labels}}`, `{{.CreatedAt}}`, `{{.Label "KEY"}}` and
//! `{{json .}}`; a template that starts with `table ` prints a header row
//! and aligns columns. `\t` and `\n` in the template are a tab and a
//! newline. Only field references: no pipelines, conditions or ranges.

use anyhow::{bail, Result};
use weft_cnm::model::Network;

/// Filter keys `network ls --filter` knows.
const FILTER_KEYS: &str = "driver, scope, name, id, label, label!, dangling";

/// Template fields `--format` knows.
const TEMPLATE_FIELDS: &str = ".Name, .ID, .Driver, .Scope, .Subnet, .Internal, .IPv6, .Labels, .CreatedAt, .Label \"KEY\", json .";

/// Parsed `--filter` arguments.
#[derive(Debug, Default)]
pub struct Filters {
    by_key: std::collections::BTreeMap<String, Vec<String>>,
}

/// What a filter needs to know about a network besides the network.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    /// Endpoints on it, on this host.
    pub endpoints: usize,
}

impl Filters {
    /// Parse `KEY=VALUE` arguments.
    ///
    /// # Errors
    ///
    /// A filter without `=` or with a key not in [`FILTER_KEYS`].
    pub fn parse(args: &[String]) -> Result<Filters> {
        let mut filters = Filters::default();
        for arg in args {
            let Some((key, value)) = arg.split_once('=') else {
                bail!("--filter {arg:?}: write KEY=VALUE (keys: {FILTER_KEYS})");
            };
            let key = key.to_ascii_lowercase();
            if !FILTER_KEYS.split(", ").any(|k| k == key) {
                bail!("--filter {arg:?}: unknown key {key:?} (keys: {FILTER_KEYS})");
            }
            if key == "dangling" && !matches!(value, "true" | "false" | "1" | "0") {
                bail!("--filter {arg:?}: dangling is true or false");
            }
            filters
                .by_key
                .entry(key)
                .or_default()
                .push(value.to_owned());
        }
        Ok(filters)
    }

    /// Whether a filter needs [`Facts`] (endpoint counts: one inspect per
    /// network).
    pub fn needs_facts(&self) -> bool {
        self.by_key.contains_key("dangling")
    }

    /// Whether `network` passes every filter.
    pub fn matches(&self, network: &Network, facts: Option<Facts>) -> bool {
        let has_label = |value: &str| match value.split_once('=') {
            Some((k, v)) => network.labels.get(k).is_some_and(|have| have == v),
            None => network.labels.contains_key(value),
        };
        self.by_key.iter().all(|(key, values)| {
            if key == "label!" {
                return !values.iter().any(|v| has_label(v));
            }
            values.iter().any(|value| match key.as_str() {
                "driver" => network.driver.as_str() == value,
                "scope" => network.scope.as_str() == value,
                "name" => network.name.contains(value.as_str()),
                "id" => network.id.starts_with(value.as_str()),
                "label" => has_label(value),
                "dangling" => {
                    let dangling = facts.is_some_and(|f| f.endpoints == 0);
                    dangling == matches!(value.as_str(), "true" | "1")
                }
                _ => false,
            })
        })
    }
}

/// One `--format`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// Docker's columns.
    Table,
    /// The API's objects.
    Json,
    /// A Go-like template; `table` when it began with `table `.
    Template {
        /// Print a header row and align the columns.
        table: bool,
        /// The template's pieces.
        parts: Vec<Part>,
    },
}

/// A piece of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// Text printed as it is.
    Text(String),
    /// A field (`.Name`), its header in table form.
    Field(Field),
}

/// A field a template can name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// `.Name`.
    Name,
    /// `.ID` (the short id, as Docker shows).
    Id,
    /// `.Driver`.
    Driver,
    /// `.Scope`.
    Scope,
    /// `.Subnet` (comma-separated).
    Subnet,
    /// `.Internal`.
    Internal,
    /// `.IPv6`: whether a subnet is IPv6.
    Ipv6,
    /// `.Labels`: `k=v,k=v`.
    Labels,
    /// `.CreatedAt`.
    CreatedAt,
    /// `.Label "KEY"`.
    Label(String),
    /// `json .`.
    Json,
}

impl Format {
    /// Parse a `--format` value.
    ///
    /// # Errors
    ///
    /// A template with an unclosed `{{` or an unknown field.
    pub fn parse(text: &str) -> Result<Format> {
        match text {
            "table" | "" => return Ok(Format::Table),
            "json" => return Ok(Format::Json),
            _ => {}
        }
        let (table, body) = match text.strip_prefix("table ") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let Some(len) = rest[start..].find("}}") else {
                bail!("--format {text:?}: a {{{{ without }}}}");
            };
            let action = rest[start + 2..start + len].trim();
            parts.push(Part::Field(Field::parse(action).ok_or_else(|| {
                anyhow::anyhow!(
                    "--format {text:?}: unknown field {{{{{action}}}}} (fields: {TEMPLATE_FIELDS})"
                )
            })?));
            rest = &rest[start + len + 2..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Format::Template { table, parts })
    }

    /// Render `networks` (with the header for table forms).
    ///
    /// # Errors
    ///
    /// JSON encoding (cannot fail for these types in practice).
    pub fn render(&self, networks: &[Network]) -> Result<String> {
        Ok(match self {
            Format::Json => format!("{}\n", serde_json::to_string_pretty(networks)?),
            Format::Table => {
                let fields = [
                    Field::Id,
                    Field::Name,
                    Field::Driver,
                    Field::Scope,
                    Field::Subnet,
                ];
                let header = ["NETWORK ID", "NAME", "DRIVER", "SCOPE", "SUBNET"].map(str::to_owned);
                let rows: Vec<[String; 5]> = networks
                    .iter()
                    .map(|n| fields.clone().map(|f| f.value(n)))
                    .collect();
                crate::network::render_table(&header, &rows)
            }
            Format::Template { table, parts } => {
                let line = |n: &Network| -> String {
                    parts
                        .iter()
                        .map(|p| match p {
                            Part::Text(t) => t.clone(),
                            Part::Field(f) => f.value(n),
                        })
                        .collect()
                };
                if *table {
                    let header: String = parts
                        .iter()
                        .map(|p| match p {
                            Part::Text(t) => t.clone(),
                            Part::Field(f) => f.header(),
                        })
                        .collect();
                    let lines: Vec<String> = std::iter::once(header)
                        .chain(networks.iter().map(line))
                        .collect();
                    align_tabs(&lines)
                } else {
                    networks.iter().map(|n| format!("{}\n", line(n))).collect()
                }
            }
        })
    }
}

impl Field {
    fn parse(action: &str) -> Option<Field> {
        if let Some(key) = action.strip_prefix(".Label ") {
            let key = key.trim().strip_prefix('"')?.strip_suffix('"')?;
            return Some(Field::Label(key.to_owned()));
        }
        Some(match action {
            ".Name" => Field::Name,
            ".ID" => Field::Id,
            ".Driver" => Field::Driver,
            ".Scope" => Field::Scope,
            ".Subnet" => Field::Subnet,
            ".Internal" => Field::Internal,
            ".IPv6" => Field::Ipv6,
            ".Labels" => Field::Labels,
            ".CreatedAt" => Field::CreatedAt,
            "json ." => Field::Json,
            _ => return None,
        })
    }

    fn header(&self) -> String {
        match self {
            Field::Id => "NETWORK ID".to_owned(),
            Field::CreatedAt => "CREATED AT".to_owned(),
            Field::Label(key) => key.to_ascii_uppercase(),
            Field::Json => "JSON".to_owned(),
            other => format!("{other:?}").to_ascii_uppercase(),
        }
    }

    fn value(&self, n: &Network) -> String {
        match self {
            Field::Name => n.name.clone(),
            Field::Id => n.short_id().to_owned(),
            Field::Driver => n.driver.to_string(),
            Field::Scope => n.scope.as_str().to_owned(),
            Field::Subnet => n
                .subnets
                .iter()
                .map(|s| s.subnet.to_string())
                .collect::<Vec<_>>()
                .join(","),
            Field::Internal => n.internal.to_string(),
            Field::Ipv6 => n
                .subnets
                .iter()
                .any(|s| s.subnet.addr().is_ipv6())
                .to_string(),
            Field::Labels => n
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
            Field::CreatedAt => n.created.clone(),
            Field::Label(key) => n.labels.get(key).cloned().unwrap_or_default(),
            Field::Json => serde_json::to_string(n).unwrap_or_default(),
        }
    }
}

/// Lines whose cells are tab-separated, padded to the widest cell of each
/// column, three spaces apart (as `docker ... --format 'table ...'`).
fn align_tabs(lines: &[String]) -> String {
    let rows: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
    let mut widths: Vec<usize> = Vec::new();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(cell.len());
        }
    }
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<w$}", w = widths[i]))
            .collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(name: &str, driver: &str, labels: &[(&str, &str)]) -> Network {
        serde_json::from_value(serde_json::json!({
            "name": name, "id": "0123456789abcdef".repeat(4), "driver": driver,
            "scope": if driver == "overlay" { "cluster" } else { "local" },
            "subnets": [{"subnet": "10.1.0.0/24", "gateway": "10.1.0.1"}],
            "internal": false, "mtu": 1500, "created": "2026-12-03T13:00:00Z",
            "labels": labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<std::collections::BTreeMap<_, _>>(),
        }))
        .unwrap()
    }

    #[test]
    fn filters_of_one_key_or_and_of_keys_and() {
        let web = network("web", "bridge", &[("env", "prod")]);
        let db = network("db", "overlay", &[("env", "dev"), ("tier", "")]);
        let f = |args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
            let f = Filters::parse(&args).unwrap();
            [&web, &db]
                .iter()
                .filter(|n| f.matches(n, None))
                .map(|n| n.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(f(&["driver=bridge"]), ["web"]);
        assert_eq!(f(&["driver=bridge", "driver=overlay"]), ["web", "db"]);
        assert_eq!(f(&["driver=bridge", "label=env=dev"]), Vec::<String>::new());
        assert_eq!(f(&["label=tier"]), ["db"]);
        assert_eq!(f(&["label=env=prod"]), ["web"]);
        assert_eq!(f(&["label!=tier"]), ["web"]);
        assert_eq!(f(&["label!=env=prod", "label!=tier"]), Vec::<String>::new());
        assert_eq!(f(&["name=e"]), ["web"]);
        assert_eq!(f(&["scope=cluster"]), ["db"]);
        assert_eq!(f(&["id=0123"]), ["web", "db"]);
        let e = Filters::parse(&["colour=red".to_owned()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown key \"colour\"") && e.contains("driver, scope"),
            "{e}"
        );
        assert!(Filters::parse(&["driver".to_owned()]).is_err());
    }

    #[test]
    fn templates_print_fields_and_tables_align() {
        let nets = [network("web", "bridge", &[("env", "prod")])];
        let out = Format::parse("{{.Name}} {{.Driver}} {{.Label \"env\"}}")
            .unwrap()
            .render(&nets)
            .unwrap();
        assert_eq!(out, "web bridge prod\n");
        let out = Format::parse("table {{.Name}}\\t{{.Scope}}")
            .unwrap()
            .render(&nets)
            .unwrap();
        assert_eq!(out, "NAME   SCOPE\nweb    local\n");
        let out = Format::parse("{{json .}}").unwrap().render(&nets).unwrap();
        let back: Network = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(back, nets[0]);
        let e = Format::parse("{{.Colour}}").unwrap_err().to_string();
        assert!(e.contains("unknown field {{.Colour}}"), "{e}");
        assert!(Format::parse("{{.Name").is_err());
        assert_eq!(Format::parse("json").unwrap(), Format::Json);
    }
}
