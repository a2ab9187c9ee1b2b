//! Name templates with `{placeholder}`s (Kafka topics, S3 key prefixes):
//! split into text and placeholders, each emitter taking the names it
//! knows.

/// One piece of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part<'a> {
    /// Text as written.
    Text(&'a str),
    /// A placeholder's name, without its braces.
    Name(&'a str),
}

/// The pieces of `template`, in order; `None` for an unclosed `{` or a
/// stray `}`.
pub(crate) fn parts(template: &str) -> Option<Vec<Part<'_>>> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Part::Text(&rest[..open]));
        }
        let close = rest[open..].find('}')? + open;
        out.push(Part::Name(&rest[open + 1..close]));
        rest = &rest[close + 1..];
    }
    if rest.contains('}') {
        return None;
    }
    if !rest.is_empty() {
        out.push(Part::Text(rest));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_text_and_names() {
        assert_eq!(
            parts("a-{source}.{x}b").unwrap(),
            [
                Part::Text("a-"),
                Part::Name("source"),
                Part::Text("."),
                Part::Name("x"),
                Part::Text("b")
            ]
        );
        assert_eq!(parts("").unwrap(), []);
        assert!(parts("a{b").is_none());
        assert!(parts("a}b").is_none());
    }
}
