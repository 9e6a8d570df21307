//! Finding a page's `<!-- report:NAME -->` … `<!-- /report:NAME -->` regions and rewriting what
//! lies between the markers. Pure text in, text out: everything outside the regions, the markers
//! included, is copied byte for byte, so hand-written prose is never touched.

use super::Region;
use crate::{MilestoneError, Result};

const OPEN: &str = "<!-- report:";
const CLOSE: &str = "<!-- /report:";
const END: &str = "-->";

/// One marked region of a page: its name and the byte range between its two markers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub name: String,
    /// First byte after the opening marker.
    pub start: usize,
    /// First byte of the closing marker.
    pub end: usize,
}

fn err(page: &str, msg: String) -> MilestoneError {
    MilestoneError::Other(format!("report: {page}: {msg}"))
}

/// The regions of `doc` (the text of docs page `page`, named in errors), in order.
///
/// # Errors
/// A marker without its `-->` or with an empty or odd name, a region opened inside another or
/// never closed, a closing marker with no open region of its name, or a name used twice.
pub fn spans(page: &str, doc: &str) -> Result<Vec<Span>> {
    let mut out: Vec<Span> = Vec::new();
    let mut open: Option<(String, usize)> = None;
    let mut pos = 0;
    while let Some(found) = doc[pos..].find("<!--") {
        let at = pos + found;
        let rest = &doc[at..];
        let (closing, prefix) = if rest.starts_with(CLOSE) {
            (true, CLOSE)
        } else if rest.starts_with(OPEN) {
            (false, OPEN)
        } else {
            pos = at + "<!--".len(); // an ordinary comment
            continue;
        };
        let line = rest.lines().next().unwrap_or(rest);
        let Some(name_len) = rest[prefix.len()..].find(END).filter(|&n| prefix.len() + n < line.len()) else {
            return Err(err(page, format!("marker `{line}` has no `-->` on its line")));
        };
        let name = rest[prefix.len()..prefix.len() + name_len].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(err(page, format!("marker `{line}` needs a name of letters, digits, `_` or `-`")));
        }
        let after = at + prefix.len() + name_len + END.len();
        match (closing, open.take()) {
            (false, Some((outer, _))) => {
                return Err(err(
                    page,
                    format!("<!-- report:{name} --> opens inside report:{outer}, which is not closed"),
                ))
            }
            (false, None) => {
                if out.iter().any(|s| s.name == name) {
                    return Err(err(page, format!("region report:{name} appears twice")));
                }
                open = Some((name.to_string(), after));
            }
            (true, Some((outer, start))) if outer == name => {
                out.push(Span { name: outer, start, end: at });
            }
            (true, outer) => {
                let inside = outer.map_or_else(|| "no open region".to_string(), |(o, _)| format!("report:{o}"));
                return Err(err(page, format!("<!-- /report:{name} --> closes {inside}")));
            }
        }
        pos = after;
    }
    if let Some((name, _)) = open {
        return Err(err(page, format!("region report:{name} is never closed (<!-- /report:{name} -->)")));
    }
    Ok(out)
}

/// `doc` with each region's content replaced by the rendered region of the same name, set off by
/// blank lines so a table or list is its own markdown block. Rewriting twice gives the same page.
///
/// # Errors
/// Marker errors (see [`spans`]); a region of the page that nothing rendered; a rendered region
/// the page has no markers for; two rendered regions of one name.
pub fn rewrite(page: &str, doc: &str, regions: &[Region]) -> Result<String> {
    for (i, r) in regions.iter().enumerate() {
        if regions[..i].iter().any(|o| o.name == r.name) {
            return Err(err(page, format!("region {} was rendered twice", r.name)));
        }
    }
    let spans = spans(page, doc)?;
    if let Some(missing) = regions.iter().find(|r| !spans.iter().any(|s| s.name == r.name)) {
        return Err(err(
            page,
            format!("no <!-- report:{0} --> … <!-- /report:{0} --> region on the page", missing.name),
        ));
    }
    let mut out = String::with_capacity(doc.len());
    let mut copied = 0;
    for s in &spans {
        let Some(r) = regions.iter().find(|r| r.name == s.name) else {
            let names: Vec<&str> = regions.iter().map(|r| r.name).collect();
            return Err(err(
                page,
                format!("unknown region report:{} (the page's renderer makes: {})", s.name, names.join(", ")),
            ));
        };
        out.push_str(&doc[copied..s.start]);
        out.push_str("\n\n");
        out.push_str(r.markdown.trim_matches('\n'));
        out.push_str("\n\n");
        copied = s.end;
    }
    out.push_str(&doc[copied..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(name: &'static str, markdown: &str) -> Region {
        Region { name, markdown: markdown.to_string() }
    }

    const DOC: &str = "# Title\n\nProse with <!-- a comment --> kept.\n\n<!-- report:table -->\nold table\n\
                       <!-- /report:table -->\nMore prose.\n<!-- report:stamp --><!-- /report:stamp -->\nEnd";

    #[test]
    fn only_the_regions_change_and_rewriting_again_changes_nothing() {
        let regions = [region("table", "| a |\n| --- |\n| 1 |\n"), region("stamp", "_measured here_")];
        let once = rewrite("p.md", DOC, &regions).unwrap();
        assert_eq!(
            once,
            "# Title\n\nProse with <!-- a comment --> kept.\n\n<!-- report:table -->\n\n| a |\n| --- |\n| 1 |\n\n\
             <!-- /report:table -->\nMore prose.\n<!-- report:stamp -->\n\n_measured here_\n\n<!-- /report:stamp -->\nEnd"
        );
        assert_eq!(rewrite("p.md", &once, &regions).unwrap(), once);
        // The text outside the regions is the same bytes as before, in the same order.
        let outside = |d: &str| {
            let s = spans("p.md", d).unwrap();
            let mut t = String::new();
            let mut at = 0;
            for sp in s {
                t.push_str(&d[at..sp.start]);
                at = sp.end;
            }
            t + &d[at..]
        };
        assert_eq!(outside(&once), outside(DOC));
    }

    #[test]
    fn a_page_without_regions_is_copied_unchanged() {
        let doc = "no regions, é unicode, <!-- other -->\n";
        assert_eq!(rewrite("p.md", doc, &[]).unwrap(), doc);
    }

    fn error(doc: &str, regions: &[Region]) -> String {
        rewrite("p.md", doc, regions).unwrap_err().to_string()
    }

    #[test]
    fn unbalanced_markers_are_errors_naming_marker_and_page() {
        let r = [region("a", "x"), region("b", "y")];
        let e = error("<!-- report:a -->\n", &r);
        assert!(e.contains("p.md") && e.contains("report:a is never closed"), "{e}");
        let e = error("<!-- report:a -->\n<!-- report:b -->\n<!-- /report:b -->\n<!-- /report:a -->", &r);
        assert!(e.contains("p.md") && e.contains("report:b --> opens inside report:a"), "{e}");
        let e = error("<!-- /report:a -->", &r);
        assert!(e.contains("/report:a --> closes no open region"), "{e}");
        let e = error("<!-- report:a -->\n<!-- /report:b -->", &r);
        assert!(e.contains("/report:b --> closes report:a"), "{e}");
        let e = error("<!-- report:a\n-->", &r);
        assert!(e.contains("`<!-- report:a` has no `-->`"), "{e}");
        let e = error("<!-- report: -->", &r);
        assert!(e.contains("needs a name"), "{e}");
    }

    #[test]
    fn duplicate_unknown_and_unplaced_regions_are_errors() {
        let a = [region("a", "x")];
        let e = error("<!-- report:a --><!-- /report:a --><!-- report:a --><!-- /report:a -->", &a);
        assert!(e.contains("p.md") && e.contains("report:a appears twice"), "{e}");
        let e = error("<!-- report:a --><!-- /report:a --><!-- report:z --><!-- /report:z -->", &a);
        assert!(e.contains("unknown region report:z") && e.contains("makes: a"), "{e}");
        let e = error("no markers", &a);
        assert!(e.contains("p.md") && e.contains("no <!-- report:a -->"), "{e}");
        let e = error("<!-- report:a --><!-- /report:a -->", &[region("a", "x"), region("a", "y")]);
        assert!(e.contains("region a was rendered twice"), "{e}");
    }
}
