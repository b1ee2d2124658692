//! The `name=` of a multipart part, read the way KAZOO writes it.
//!
//! KAZOO writes `content-disposition: form-data; name={NAME}` with the name unquoted and nothing
//! after it, whatever the name holds: an attachment named `a;b.mp3` arrives as `name=a;b.mp3`.
//! RFC 6266 parsers (actix-web's `ContentDisposition`) refuse that, or cut the name at the `;`,
//! so the parts are handed to actix-multipart as `multipart/mixed` (which needs no disposition)
//! and the name is read here: a quoted name as RFC 7578 quotes it, an unquoted one up to the end
//! of the header.

use actix_web::http::header::{self, HeaderMap};

/// The part's `name` parameter, if its `content-disposition` has one.
pub(super) fn part_name(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::CONTENT_DISPOSITION)?;
    let value = String::from_utf8_lossy(value.as_bytes());
    name_parameter(&value)
}

fn name_parameter(disposition: &str) -> Option<String> {
    // Past the disposition type (`form-data`).
    let (_, mut rest) = disposition.split_once(';')?;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return None;
        }
        let (parameter, value) = rest.split_once('=')?;
        let is_name = parameter.trim().eq_ignore_ascii_case("name");
        let value = value.trim_start_matches([' ', '\t']);
        if let Some(quoted) = value.strip_prefix('"') {
            let (text, after) = unquote(quoted)?;
            if is_name {
                return Some(text);
            }
            rest = after;
        } else if is_name {
            // KAZOO's unquoted name: the rest of the header, `;` included.
            let name = value.trim_end();
            return (!name.is_empty()).then(|| name.to_owned());
        } else {
            // Another unquoted parameter (`filename=x.mp3`): it ends at the next `;`.
            rest = value.split_once(';').map_or("", |(_, after)| after);
        }
    }
}

/// A quoted string (after its opening quote): its text, and what follows the closing quote.
fn unquote(quoted: &str) -> Option<(String, &str)> {
    let mut text = String::new();
    let mut chars = quoted.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => text.push(chars.next()?.1),
            '"' => return Some((text, &quoted[i + 1..])),
            c => text.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::name_parameter;

    #[test]
    fn kazoo_unquoted_names_run_to_the_end_of_the_header() {
        let name = |d: &str| name_parameter(d);
        assert_eq!(
            name("form-data; name=b766.mp3").as_deref(),
            Some("b766.mp3")
        );
        assert_eq!(name("form-data; name=a;b.mp3").as_deref(), Some("a;b.mp3"));
        assert_eq!(
            name("form-data; name=c; filename=d.mp3 ").as_deref(),
            Some("c; filename=d.mp3")
        );
        assert_eq!(name("form-data; name=é è.mp3").as_deref(), Some("é è.mp3"));
        assert_eq!(name("form-data;name=x").as_deref(), Some("x"));
    }

    #[test]
    fn quoted_names_and_other_parameters() {
        let name = |d: &str| name_parameter(d);
        assert_eq!(
            name(r#"form-data; name="a;b.mp3""#).as_deref(),
            Some("a;b.mp3")
        );
        assert_eq!(name(r#"form-data; name="q\"x""#).as_deref(), Some("q\"x"));
        assert_eq!(
            name(r#"form-data; filename="f;name=z"; name="real""#).as_deref(),
            Some("real")
        );
        assert_eq!(
            name("form-data; filename=f.mp3; name=n").as_deref(),
            Some("n")
        );
        assert_eq!(name("Form-Data; NAME=up").as_deref(), Some("up"));
    }

    #[test]
    fn no_name() {
        let name = |d: &str| name_parameter(d);
        assert_eq!(name("form-data"), None);
        assert_eq!(name("form-data; filename=f.mp3"), None);
        assert_eq!(name("form-data; name="), None);
        assert_eq!(name(r#"form-data; name="unterminated"#), None);
        assert_eq!(name("form-data; junk"), None);
    }
}
