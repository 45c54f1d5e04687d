//! Reading YAML into a tree that remembers where every node came from.
//!
//! Resources are deserialized from this tree (through JSON values), and every diagnostic
//! names a field path; the tree turns that path back into a line of the source file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};

/// A YAML node with the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// 1-based line of the node's first character.
    pub line: u32,
    /// What the node holds.
    pub value: NodeValue,
}

/// The content of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    /// `null`, `~` or an empty value.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A floating-point number.
    Float(f64),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping; keys are strings (other scalar keys are stringified), in source order.
    Map(Vec<Entry>),
}

/// One key of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// 1-based line of the key: where a diagnostic about this field points.
    pub key_line: u32,
    /// The value.
    pub value: Node,
}

/// One segment of a field path such as `spec.http[0].route[1].weight`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path from a resource's root to one of its fields.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The empty path: the resource itself.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// This path extended by a key.
    #[must_use]
    pub fn key(&self, key: &str) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Key(key.to_owned()));
        Self(segments)
    }

    /// This path extended by an index.
    #[must_use]
    pub fn index(&self, index: usize) -> Self {
        let mut segments = self.0.clone();
        segments.push(Segment::Index(index));
        Self(segments)
    }

    /// Parses a dotted path (`spec.http[0].route`); keys may not contain `.` or `[`.
    pub fn parse(path: &str) -> Self {
        let mut out = Self::root();
        for part in path.split('.').filter(|p| !p.is_empty()) {
            let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
            if !key.is_empty() {
                out = out.key(key);
            }
            while let Some(close) = rest.find(']') {
                if let Ok(i) = rest[1..close].parse() {
                    out = out.index(i);
                }
                rest = &rest[close + 1..];
            }
        }
        out
    }

    /// The segments, root first.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                // A key that holds a dot (an annotation or label name) is quoted, as
                // in JSONPath, so the path reads unambiguously.
                Segment::Key(key) if key.contains('.') => write!(f, "[{key:?}]")?,
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

impl Node {
    /// The child at `key` when this node is a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Map(entries) => entries.iter().find(|e| e.key == key).map(|e| &e.value),
            _ => None,
        }
    }

    /// The string value, when this node is a string.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The line of the deepest field along `path` that exists (a mapping key's own line,
    /// a sequence item's first line): a diagnostic about a field that is absent points at
    /// its nearest present parent.
    pub fn line_of(&self, path: &FieldPath) -> u32 {
        let mut node = self;
        let mut line = self.line;
        for segment in path.segments() {
            let next = match (segment, &node.value) {
                (Segment::Key(key), NodeValue::Map(entries)) => entries
                    .iter()
                    .find(|e| &e.key == key)
                    .map(|e| (e.key_line, &e.value)),
                (Segment::Index(i), NodeValue::Seq(items)) => items.get(*i).map(|n| (n.line, n)),
                _ => None,
            };
            match next {
                Some((at, next)) => {
                    line = at;
                    node = next;
                }
                None => break,
            }
        }
        line
    }

    /// Converts to a JSON value for serde, which then deserializes the typed resource.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Int(i) => Value::from(*i),
            NodeValue::Float(x) => {
                serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number)
            }
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|e| (e.key.clone(), e.value.to_json()))
                    .collect(),
            ),
        }
    }
}

/// A YAML syntax error, with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntaxError {
    /// 1-based line.
    pub line: u32,
    /// What the parser said.
    pub message: String,
}

/// One YAML document of a file.
#[derive(Debug, Clone)]
pub struct Document {
    /// The file it came from.
    pub file: Arc<Path>,
    /// The document's root node.
    pub root: Node,
}

/// Parses every document of a YAML stream. Empty documents are dropped. When the stream
/// has a syntax error, the documents around it are still returned: the stream is split at
/// its `---` lines and each piece is parsed on its own, so one broken resource does not
/// hide the others.
pub fn parse_stream(file: &Arc<Path>, text: &str) -> (Vec<Document>, Vec<SyntaxError>) {
    match parse_chunk(text, 0) {
        Ok(nodes) => (wrap(file, nodes), Vec::new()),
        Err(whole_file_error) => {
            let mut documents = Vec::new();
            let mut errors = Vec::new();
            for (offset, chunk) in split_documents(text) {
                match parse_chunk(chunk, offset) {
                    Ok(nodes) => documents.extend(wrap(file, nodes)),
                    Err(e) => errors.push(e),
                }
            }
            if errors.is_empty() {
                // The split parsed cleanly where the whole did not: keep the real error.
                errors.push(whole_file_error);
            }
            (documents, errors)
        }
    }
}

fn wrap(file: &Arc<Path>, nodes: Vec<Node>) -> Vec<Document> {
    nodes
        .into_iter()
        .filter(|n| n.value != NodeValue::Null)
        .map(|root| Document {
            file: Arc::clone(file),
            root,
        })
        .collect()
}

/// Splits a stream at lines that start a new document, returning each piece with the
/// number of lines before it.
fn split_documents(text: &str) -> Vec<(u32, &str)> {
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut start_line = 0u32;
    let mut pos = 0;
    for (line_no, line) in (0u32..).zip(text.split_inclusive('\n')) {
        if line_no > 0 && line.starts_with("---") && line[3..].trim().is_empty() {
            pieces.push((start_line, &text[start..pos]));
            start = pos;
            start_line = line_no;
        }
        pos += line.len();
    }
    pieces.push((start_line, &text[start..]));
    pieces
}

fn parse_chunk(text: &str, line_offset: u32) -> Result<Vec<Node>, SyntaxError> {
    let docs = MarkedYaml::load_from_str(text).map_err(|e| SyntaxError {
        line: line_offset + line_u32(e.marker().line()),
        message: e.info().to_owned(),
    })?;
    docs.iter().map(|d| convert(d, line_offset)).collect()
}

fn line_u32(line: usize) -> u32 {
    u32::try_from(line).unwrap_or(u32::MAX).max(1)
}

fn convert(yaml: &MarkedYaml<'_>, line_offset: u32) -> Result<Node, SyntaxError> {
    let line = line_offset + line_u32(yaml.span.start.line());
    let value =
        match &yaml.data {
            YamlData::Value(scalar) => scalar_value(scalar),
            YamlData::Sequence(items) => NodeValue::Seq(
                items
                    .iter()
                    .map(|item| convert(item, line_offset))
                    .collect::<Result<_, _>>()?,
            ),
            YamlData::Mapping(entries) => {
                let mut out: Vec<Entry> = Vec::with_capacity(entries.len());
                for (key_node, value) in entries {
                    let key = match &key_node.data {
                        YamlData::Value(Scalar::String(s)) => s.to_string(),
                        YamlData::Value(Scalar::Integer(i)) => i.to_string(),
                        YamlData::Value(Scalar::Boolean(b)) => b.to_string(),
                        YamlData::Value(Scalar::FloatingPoint(x)) => x.to_string(),
                        _ => {
                            return Err(SyntaxError {
                                line: line_offset + line_u32(key_node.span.start.line()),
                                message: "mapping keys must be scalars".to_owned(),
                            })
                        }
                    };
                    out.push(Entry {
                        key,
                        key_line: line_offset + line_u32(key_node.span.start.line()),
                        value: convert(value, line_offset)?,
                    });
                }
                NodeValue::Map(out)
            }
            YamlData::Tagged(_, inner) => return convert(inner, line_offset),
            YamlData::Representation(text, _, _) => NodeValue::Str(text.to_string()),
            YamlData::Alias(_) | YamlData::BadValue => return Err(SyntaxError {
                line,
                message:
                    "value cannot be read (unresolved alias or a value that does not fit its tag)"
                        .to_owned(),
            }),
        };
    Ok(Node { line, value })
}

fn scalar_value(scalar: &Scalar<'_>) -> NodeValue {
    match scalar {
        Scalar::Null => NodeValue::Null,
        Scalar::Boolean(b) => NodeValue::Bool(*b),
        Scalar::Integer(i) => NodeValue::Int(*i),
        Scalar::FloatingPoint(x) => NodeValue::Float(x.into_inner()),
        Scalar::String(s) => NodeValue::Str(s.to_string()),
    }
}

/// A path that could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {path}: {source}")]
pub struct ReadError {
    /// The path given.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// A file found under the given paths, with its text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Its path, as found.
    pub path: Arc<Path>,
    /// Its contents.
    pub text: String,
}

/// Reads every file named, and every `*.yaml`/`*.yml` under every directory named
/// (recursively, in sorted order so that results are stable).
pub fn read_paths(paths: &[PathBuf]) -> Result<Vec<SourceFile>, ReadError> {
    let mut files = Vec::new();
    for path in paths {
        collect(path, true, &mut files)?;
    }
    Ok(files)
}

fn collect(path: &Path, named: bool, files: &mut Vec<SourceFile>) -> Result<(), ReadError> {
    let err = |source| ReadError {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(err)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(err)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for entry in entries {
            collect(&entry, false, files)?;
        }
    } else if named || is_yaml(path) {
        let text = std::fs::read_to_string(path).map_err(err)?;
        files.push(SourceFile {
            path: Arc::from(path),
            text,
        });
    }
    Ok(())
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> Arc<Path> {
        Arc::from(Path::new("t.yaml"))
    }

    #[test]
    fn lines_are_kept_for_nested_fields() {
        let text = "a: 1\n---\nkind: X\nspec:\n  http:\n  - route:\n    - weight: 5\n";
        let (docs, errors) = parse_stream(&file(), text);
        assert!(errors.is_empty());
        assert_eq!(docs.len(), 2);
        let path = FieldPath::parse("spec.http[0].route[0].weight");
        assert_eq!(docs[1].root.line_of(&path), 7);
        assert_eq!(
            docs[1]
                .root
                .line_of(&FieldPath::parse("spec.http[0].missing")),
            6
        );
    }

    #[test]
    fn a_syntax_error_keeps_the_other_documents() {
        let text = "kind: A\n---\nkind: [B\n---\nkind: C\n";
        let (docs, errors) = parse_stream(&file(), text);
        let kinds: Vec<_> = docs
            .iter()
            .filter_map(|d| d.root.get("kind")?.as_str())
            .collect();
        assert_eq!(kinds, ["A", "C"]);
        assert_eq!(errors.len(), 1);
        assert!((3..=4).contains(&errors[0].line), "line {}", errors[0].line);
    }

    #[test]
    fn field_path_round_trips() {
        let path = FieldPath::parse("spec.http[0].route[1].weight");
        assert_eq!(path.to_string(), "spec.http[0].route[1].weight");
        assert_eq!(FieldPath::root().key("a").index(2).to_string(), "a[2]");
    }
}
