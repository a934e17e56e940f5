//! Manifests as users write them: YAML with `---`-separated documents, or JSON (one
//! object, several concatenated, an array, or a `kind: List`). Every document is decoded
//! and validated before anything is applied, and every problem is reported with the
//! document number and, where the parser knows it, the line.

use serde_json::Value;

use crate::{
    resource::{
        DecodeError, Decoded, RESOURCE_TYPES, ResourceType, Source, TypeMeta, find_by_kind,
    },
    validation::FieldError,
};

/// Largest manifest accepted in one request (Kubernetes' default request body limit).
pub const MAX_MANIFEST_BYTES: usize = 3 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct ManifestObject {
    /// 1-based, counting non-empty documents in the order they appear.
    pub document: usize,
    /// 1-based line where the document starts.
    pub line: usize,
    pub resource_type: &'static ResourceType,
    pub decoded: Decoded,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("document {document}{}: {message}", line.map(|l| format!(" (line {l})")).unwrap_or_default())]
    Malformed {
        document: usize,
        line: Option<usize>,
        message: String,
    },
    #[error("document {document} (line {line}): {kind} {name:?} is invalid: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid {
        document: usize,
        line: usize,
        kind: String,
        name: String,
        errors: Vec<FieldError>,
    },
}

/// Parses every document; returns all errors if any document is bad, so a manifest is
/// applied whole or not at all.
pub fn parse(text: &str) -> Result<Vec<ManifestObject>, Vec<ManifestError>> {
    if text.len() > MAX_MANIFEST_BYTES {
        return Err(vec![ManifestError::TooLarge {
            size: text.len(),
            limit: MAX_MANIFEST_BYTES,
        }]);
    }
    let trimmed = text.trim_start();
    let documents = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        json_documents(text)?
    } else {
        yaml_documents(text)
    };
    let mut objects = Vec::new();
    let mut errors = Vec::new();
    for (index, doc) in documents.into_iter().enumerate() {
        let document = index + 1;
        match doc {
            Doc::Text { line, text, json } => match decode_text(text, json) {
                Ok(DocContent::One(resource_type, decoded)) => objects.push(ManifestObject {
                    document,
                    line,
                    resource_type,
                    decoded,
                }),
                Ok(DocContent::List(items)) => {
                    decode_items(document, line, items, &mut objects, &mut errors)
                }
                Err(e) => errors.push(e.at(document, line)),
            },
            Doc::Items { line, items } => {
                decode_items(document, line, items, &mut objects, &mut errors)
            }
        }
    }
    if errors.is_empty() {
        Ok(objects)
    } else {
        Err(errors)
    }
}

enum Doc<'a> {
    Text {
        line: usize,
        text: &'a str,
        json: bool,
    },
    Items {
        line: usize,
        items: Vec<Value>,
    },
}

/// Splits at `---` lines. A document marker in column 0 ends a document even inside a
/// block scalar (YAML 1.2 §9.1), so this never cuts a document the parser would keep.
fn yaml_documents(text: &str) -> Vec<Doc<'_>> {
    let mut docs = Vec::new();
    let mut start = 0usize;
    let mut start_line = 1usize;
    let mut offset = 0usize;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end();
        let is_marker =
            bare == "---" || bare.starts_with("--- ") || bare.starts_with("---\t") || bare == "...";
        if is_marker {
            push_document(&mut docs, text, start, offset, start_line);
            start = offset + line.len();
            start_line = number + 2;
        }
        offset += line.len();
    }
    push_document(&mut docs, text, start, text.len(), start_line);
    docs
}

fn push_document<'a>(
    docs: &mut Vec<Doc<'a>>,
    text: &'a str,
    start: usize,
    end: usize,
    line: usize,
) {
    let chunk = &text[start..end];
    let is_filler = |l: &str| l.trim().is_empty() || l.trim_start().starts_with('#');
    if chunk.lines().all(is_filler) {
        return;
    }
    // Report the line of the first content, not of leading comments.
    let skipped = chunk.lines().take_while(|l| is_filler(l)).count();
    docs.push(Doc::Text {
        line: line + skipped,
        text: chunk,
        json: false,
    });
}

fn json_documents(text: &str) -> Result<Vec<Doc<'_>>, Vec<ManifestError>> {
    let mut docs = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut start = 0usize;
    loop {
        let line = line_of(text, start + leading_ws(&text[start..]));
        match stream.next() {
            None => break,
            Some(Ok(Value::Array(items))) => docs.push(Doc::Items { line, items }),
            Some(Ok(_)) => {
                let end = stream.byte_offset();
                docs.push(Doc::Text {
                    line,
                    text: &text[start..end],
                    json: true,
                });
            }
            Some(Err(e)) => {
                return Err(vec![ManifestError::Malformed {
                    document: docs.len() + 1,
                    line: Some(e.line()),
                    message: e.to_string(),
                }]);
            }
        }
        start = stream.byte_offset();
    }
    Ok(docs)
}

fn leading_ws(text: &str) -> usize {
    text.len() - text.trim_start().len()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

enum DocContent {
    One(&'static ResourceType, Decoded),
    List(Vec<Value>),
}

/// An error before the document number is known.
struct DocError {
    /// Relative to the document's first line.
    line: Option<usize>,
    kind: String,
    name: String,
    error: DecodeError,
}

impl DocError {
    /// Without a line from the parser (a missing `kind`, an error serde_norway cannot
    /// place), the error points at the document's first line: every error says where.
    fn at(self, document: usize, doc_line: usize) -> ManifestError {
        let absolute = Some(doc_line + self.line.unwrap_or(1).saturating_sub(1));
        match self.error {
            DecodeError::Invalid { errors } => ManifestError::Invalid {
                document,
                line: doc_line,
                kind: self.kind,
                name: self.name,
                errors,
            },
            DecodeError::Malformed { message, .. } => ManifestError::Malformed {
                document,
                line: absolute,
                message: strip_location(&message),
            },
        }
    }
}

/// serde_norway and serde_json append "at line X column Y" relative to the chunk; the
/// error already carries the absolute line, so drop theirs.
fn strip_location(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn malformed(line: Option<usize>, message: String) -> DocError {
    DocError {
        line,
        kind: String::new(),
        name: String::new(),
        error: DecodeError::Malformed { line, message },
    }
}

fn decode_text(text: &str, json: bool) -> Result<DocContent, DocError> {
    let type_meta: TypeMeta = if json {
        serde_json::from_str(text).map_err(|e| malformed(Some(e.line()), e.to_string()))?
    } else {
        serde_norway::from_str(text)
            .map_err(|e| malformed(e.location().map(|l| l.line()), e.to_string()))?
    };
    if type_meta.kind == "List" {
        let value: Value = if json {
            serde_json::from_str(text).map_err(|e| malformed(Some(e.line()), e.to_string()))?
        } else {
            serde_norway::from_str(text)
                .map_err(|e| malformed(e.location().map(|l| l.line()), e.to_string()))?
        };
        let items = match value.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => return Err(malformed(None, "a List needs an `items` array".to_owned())),
        };
        return Ok(DocContent::List(items));
    }
    let resource_type = resolve(&type_meta)?;
    let name = name_of_text(text, json);
    let source = if json {
        Source::Json(text.as_bytes())
    } else {
        Source::Yaml(text)
    };
    let decoded = resource_type.decode(source).map_err(|error| DocError {
        line: match &error {
            DecodeError::Malformed { line, .. } => *line,
            DecodeError::Invalid { .. } => None,
        },
        kind: resource_type.kind.to_owned(),
        name,
        error,
    })?;
    Ok(DocContent::One(resource_type, decoded))
}

fn resolve(type_meta: &TypeMeta) -> Result<&'static ResourceType, DocError> {
    if type_meta.kind.is_empty() || type_meta.api_version.is_empty() {
        return Err(malformed(
            None,
            "apiVersion and kind are required".to_owned(),
        ));
    }
    find_by_kind(&type_meta.api_version, &type_meta.kind).ok_or_else(|| {
        let supported: Vec<String> = RESOURCE_TYPES
            .iter()
            .map(|t| format!("{} {}", t.api_version(), t.kind))
            .collect();
        malformed(
            None,
            format!(
                "{} {} is not supported; supported kinds: {}",
                type_meta.api_version,
                type_meta.kind,
                supported.join(", ")
            ),
        )
    })
}

fn name_of_text(text: &str, json: bool) -> String {
    #[derive(serde::Deserialize, Default)]
    struct Named {
        #[serde(default)]
        metadata: NameOnly,
    }
    #[derive(serde::Deserialize, Default)]
    struct NameOnly {
        #[serde(default)]
        name: String,
    }
    let named: Option<Named> = if json {
        serde_json::from_str(text).ok()
    } else {
        serde_norway::from_str(text).ok()
    };
    named.unwrap_or_default().metadata.name
}

fn decode_items(
    document: usize,
    line: usize,
    items: Vec<Value>,
    objects: &mut Vec<ManifestObject>,
    errors: &mut Vec<ManifestError>,
) {
    for (i, item) in items.into_iter().enumerate() {
        let prefix = |message: String| format!("items[{i}]: {message}");
        let type_meta: TypeMeta = match serde_json::from_value(item.clone()) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ManifestError::Malformed {
                    document,
                    line: Some(line),
                    message: prefix(e.to_string()),
                });
                continue;
            }
        };
        let resource_type = match resolve(&type_meta) {
            Ok(t) => t,
            Err(e) => {
                let mut e = e.at(document, line);
                if let ManifestError::Malformed { message, .. } = &mut e {
                    *message = prefix(std::mem::take(message));
                }
                errors.push(e);
                continue;
            }
        };
        let name = item
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match resource_type.decode(Source::Value(item)) {
            Ok(decoded) => objects.push(ManifestObject {
                document,
                line,
                resource_type,
                decoded,
            }),
            Err(DecodeError::Invalid {
                errors: field_errors,
            }) => errors.push(ManifestError::Invalid {
                document,
                line,
                kind: resource_type.kind.to_owned(),
                name,
                errors: field_errors,
            }),
            Err(DecodeError::Malformed { message, .. }) => errors.push(ManifestError::Malformed {
                document,
                line: Some(line),
                message: prefix(message),
            }),
        }
    }
}
