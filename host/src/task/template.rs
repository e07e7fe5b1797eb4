//! Prompt templates: literal text with `{field}` placeholders; `{{` and `}}` are literal braces.

use std::collections::BTreeMap;

/// A parsed template. Substituted values are inserted verbatim and never parsed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Template {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Field(String),
}

/// Why a template failed to parse, at which byte offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TemplateSyntaxError {
    pub(crate) position: usize,
    pub(crate) problem: &'static str,
}

impl Template {
    /// Parses `text`. Placeholder names are one or more ASCII letters, digits or `_`.
    pub(crate) fn parse(text: &str) -> Result<Template, TemplateSyntaxError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((position, c)) = chars.next() {
            match c {
                '{' if chars.peek().is_some_and(|&(_, next)| next == '{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().is_some_and(|&(_, next)| next == '}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(TemplateSyntaxError {
                        position,
                        problem: "unmatched `}`",
                    });
                }
                '{' => {
                    let mut name = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '}' {
                            closed = true;
                            break;
                        }
                        name.push(c);
                    }
                    if !closed {
                        return Err(TemplateSyntaxError {
                            position,
                            problem: "unmatched `{`",
                        });
                    }
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(TemplateSyntaxError {
                            position,
                            problem: "a placeholder name must be letters, digits or _",
                        });
                    }
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Field(name));
                }
                c => literal.push(c),
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template { segments })
    }

    /// The placeholder names, in order of appearance (repeats included).
    pub(crate) fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Field(name) => Some(name.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Substitutes `values`; the caller has checked that every placeholder has a value
    /// (a missing one renders as the empty string).
    pub(crate) fn render(&self, values: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Field(name) => {
                    out.push_str(values.get(name).map_or("", String::as_str));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(template: &str, values: &[(&str, &str)], expected: &str) {
        let values = values
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let rendered = Template::parse(template).map(|t| t.render(&values));
        assert_eq!(rendered, Ok(expected.to_string()), "template {template:?}");
    }

    fn check_error(template: &str, position: usize, problem: &'static str) {
        let error = Template::parse(template).map(|_| ());
        assert_eq!(
            error,
            Err(TemplateSyntaxError { position, problem }),
            "template {template:?}"
        );
    }

    #[test]
    fn renders_fields_and_literals() {
        check("", &[], "");
        check("plain", &[], "plain");
        check("Q: {q}\nA:", &[("q", "why")], "Q: why\nA:");
        check("{a}{b}{a}", &[("a", "1"), ("b", "2")], "121");
        check("{x_1}", &[("x_1", "é")], "é");
    }

    #[test]
    fn doubled_braces_are_literal() {
        check("{{q}}", &[("q", "no")], "{q}");
        check("{{{q}}}", &[("q", "v")], "{v}");
        check("a }} b {{", &[], "a } b {");
    }

    #[test]
    fn values_are_not_parsed_again() {
        check("{q}", &[("q", "{other} }")], "{other} }");
    }

    #[test]
    fn malformed_templates_name_the_position() {
        check_error("a {b", 2, "unmatched `{`");
        check_error("a } b", 2, "unmatched `}`");
        check_error("{}", 0, "a placeholder name must be letters, digits or _");
        check_error(
            "x{a b}",
            1,
            "a placeholder name must be letters, digits or _",
        );
    }

    #[test]
    fn placeholders_in_order() {
        let template = Template::parse("{b} {{c}} {a} {b}").map_err(|e| e.problem);
        let names: Vec<&str> = template.iter().flat_map(Template::placeholders).collect();
        assert_eq!(names, ["b", "a", "b"]);
    }
}
