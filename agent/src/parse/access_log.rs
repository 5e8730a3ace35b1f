//! nginx and Apache access logs in the combined format, read by a hand-rolled scanner.
//!
//! ```text
//! nginx:  $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"
//! apache: %h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-agent}i"
//! ```
//!
//! | part | nginx field | apache field |
//! | --- | --- | --- |
//! | 1st token | `remote_addr` | `host` |
//! | 2nd token | (the literal `-`, not a field) | `ident` |
//! | 3rd token | `remote_user` | `user` |
//! | `[...]` | `time_local` | `time` |
//! | `"$request"` | `method`, `path`, `protocol` | the same |
//! | status | `status` | `status` |
//! | size | `body_bytes_sent` | `size` |
//! | `"..."` | `http_referer` | `referer` |
//! | `"..."` | `http_user_agent` | `agent` |
//!
//! The request is split into method, path and protocol when it is exactly three
//! space-separated parts; otherwise (a bare `-`, garbage sent to the port) it is one
//! field named `request`. Values are kept as logged: `-` stays `-`, and escape sequences
//! inside quoted parts (`\"` from Apache, `\x22` from nginx) are not decoded, because the
//! two servers escape differently and the raw text is what the user sees in the file.
//! The scanner does honour `\"` (and `\\`) when looking for a closing quote.
//!
//! The status must be three digits and the size digits or `-`. The line may end after
//! the size (the *common* log format: no referer or agent fields) and may carry more
//! text after the user agent, separated by a space (formats that append
//! `"$http_x_forwarded_for"` and the like); that text is not a field but stays in the
//! body.
//!
//! # Performance
//!
//! One pass with `memchr`, no regex, no allocation: every value is a slice of the body.

use bytes::Bytes;
use memchr::{memchr, memchr2};

use super::Text;
use crate::batch::Field;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Nginx,
    Apache,
}

/// Field names of one preset, in line order. `ident` is `None` when the second token is
/// not reported (nginx always writes `-` there).
struct Names {
    addr: &'static str,
    ident: Option<&'static str>,
    user: &'static str,
    time: &'static str,
    status: &'static str,
    size: &'static str,
    referer: &'static str,
    agent: &'static str,
}

const NGINX: Names = Names {
    addr: "remote_addr",
    ident: None,
    user: "remote_user",
    time: "time_local",
    status: "status",
    size: "body_bytes_sent",
    referer: "http_referer",
    agent: "http_user_agent",
};

const APACHE: Names = Names {
    addr: "host",
    ident: Some("ident"),
    user: "user",
    time: "time",
    status: "status",
    size: "size",
    referer: "referer",
    agent: "agent",
};

impl Preset {
    pub(super) fn parse(self, body: &Text, index: u32, fields: &mut Vec<Field>) -> bool {
        let names = match self {
            Preset::Nginx => &NGINX,
            Preset::Apache => &APACHE,
        };
        scan(body, names, index, fields).is_some()
    }
}

/// Reads the line; `None` as soon as it departs from the format (fields pushed until
/// then are truncated by the caller).
fn scan(body: &Text, names: &Names, index: u32, fields: &mut Vec<Field>) -> Option<()> {
    let mut cursor = Cursor { body, pos: 0 };
    let mut push = |name: &'static str, (start, end): (usize, usize)| {
        fields.push(Field {
            line: index,
            key: Bytes::from_static(name.as_bytes()),
            value: body.slice(start..end),
        });
    };

    push(names.addr, cursor.token()?);
    cursor.space()?;
    let ident = cursor.token()?;
    if let Some(name) = names.ident {
        push(name, ident);
    }
    cursor.space()?;
    push(names.user, cursor.token()?);
    cursor.space()?;
    push(names.time, cursor.bracketed()?);
    cursor.space()?;
    let request = cursor.quoted()?;
    match split_request(&body[request.0..request.1]) {
        Some((method, path)) => {
            let (start, end) = request;
            push("method", (start, start + method));
            push("path", (start + method + 1, start + path));
            push("protocol", (start + path + 1, end));
        }
        None => push("request", request),
    }
    cursor.space()?;
    let status = cursor.token()?;
    if !(status.1 - status.0 == 3 && body[status.0..status.1].iter().all(u8::is_ascii_digit)) {
        return None;
    }
    push(names.status, status);
    cursor.space()?;
    let size = cursor.token()?;
    let size_text = &body[size.0..size.1];
    if !(size_text == b"-" || size_text.iter().all(u8::is_ascii_digit)) {
        return None;
    }
    push(names.size, size);
    if cursor.at_end() {
        return Some(());
    }
    cursor.space()?;
    push(names.referer, cursor.quoted()?);
    cursor.space()?;
    push(names.agent, cursor.quoted()?);
    if cursor.at_end() {
        return Some(());
    }
    cursor.space()
}

/// `Some((end of method, end of path))` when `request` is exactly three non-empty
/// space-separated parts.
fn split_request(request: &[u8]) -> Option<(usize, usize)> {
    let method = memchr(b' ', request)?;
    let path = method + 1 + memchr(b' ', &request[method + 1..])?;
    let parts_ok = method > 0
        && path > method + 1
        && path + 1 < request.len()
        && memchr(b' ', &request[path + 1..]).is_none();
    parts_ok.then_some((method, path))
}

/// Position in the line; every method returns the `(start, end)` span it consumed (for
/// delimited parts: of the content between the delimiters).
struct Cursor<'a> {
    body: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn rest(&self) -> &[u8] {
        &self.body[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos == self.body.len()
    }

    fn space(&mut self) -> Option<()> {
        self.byte(b' ')
    }

    fn byte(&mut self, expected: u8) -> Option<()> {
        (self.rest().first() == Some(&expected)).then(|| self.pos += 1)
    }

    /// A non-empty run of bytes up to the next space or the end of the line.
    fn token(&mut self) -> Option<(usize, usize)> {
        let start = self.pos;
        let len = memchr(b' ', self.rest()).unwrap_or(self.body.len() - start);
        self.pos += len;
        (len > 0).then_some((start, self.pos))
    }

    /// `[content]`; the content cannot contain `]`.
    fn bracketed(&mut self) -> Option<(usize, usize)> {
        self.byte(b'[')?;
        let start = self.pos;
        let end = start + memchr(b']', self.rest())?;
        self.pos = end + 1;
        Some((start, end))
    }

    /// `"content"`; a backslash escapes the byte after it, so `\"` does not close.
    fn quoted(&mut self) -> Option<(usize, usize)> {
        self.byte(b'"')?;
        let start = self.pos;
        loop {
            let at = self.pos + memchr2(b'"', b'\\', self.rest())?;
            if self.body[at] == b'"' {
                self.pos = at + 1;
                return Some((start, at));
            }
            // Skip the backslash and the byte it escapes (which may be past the end,
            // making the next search fail: an unterminated quote).
            self.pos = (at + 2).min(self.body.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::NO_CHUNKS;

    fn run(preset: Preset, body: &[u8]) -> Option<Vec<(&'static str, String)>> {
        let body = Bytes::copy_from_slice(body);
        let mut fields = Vec::new();
        if !preset.parse(&Text::owned(&body), 9, &mut fields) {
            return None;
        }
        Some(
            fields
                .into_iter()
                .map(|f| {
                    assert_eq!(f.line, 9);
                    let key: &'static str =
                        Box::leak(String::from_utf8(f.key.to_vec()).unwrap().into_boxed_str());
                    (
                        key,
                        String::from_utf8_lossy(f.value.get(NO_CHUNKS)).into_owned(),
                    )
                })
                .collect(),
        )
    }

    fn pairs(p: &[(&'static str, &str)]) -> Option<Vec<(&'static str, String)>> {
        Some(p.iter().map(|(k, v)| (*k, v.to_string())).collect())
    }

    const NGINX_LINE: &[u8] = br#"203.0.113.7 - alice [10/Oct/2024:13:55:36 +0000] "GET /api/v1/items?id=3 HTTP/1.1" 200 5123 "https://example.com/start" "Mozilla/5.0 (X11; Linux x86_64)""#;

    #[test]
    fn nginx_combined() {
        assert_eq!(
            run(Preset::Nginx, NGINX_LINE),
            pairs(&[
                ("remote_addr", "203.0.113.7"),
                ("remote_user", "alice"),
                ("time_local", "10/Oct/2024:13:55:36 +0000"),
                ("method", "GET"),
                ("path", "/api/v1/items?id=3"),
                ("protocol", "HTTP/1.1"),
                ("status", "200"),
                ("body_bytes_sent", "5123"),
                ("http_referer", "https://example.com/start"),
                ("http_user_agent", "Mozilla/5.0 (X11; Linux x86_64)"),
            ])
        );
    }

    #[test]
    fn apache_combined_with_escaped_quotes() {
        let line = br#"::1 ident-x frank [10/Oct/2000:13:55:36 -0700] "GET /a\"b HTTP/1.0" 404 - "-" "agent \"quoted\" \\""#;
        assert_eq!(
            run(Preset::Apache, line),
            pairs(&[
                ("host", "::1"),
                ("ident", "ident-x"),
                ("user", "frank"),
                ("time", "10/Oct/2000:13:55:36 -0700"),
                ("method", "GET"),
                ("path", r#"/a\"b"#),
                ("protocol", "HTTP/1.0"),
                ("status", "404"),
                ("size", "-"),
                ("referer", "-"),
                ("agent", r#"agent \"quoted\" \\"#),
            ])
        );
    }

    #[test]
    fn odd_requests_are_one_field() {
        let line = br#"10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "\x16\x03\x01" 400 150 "-" "-""#;
        let got = run(Preset::Nginx, line).unwrap();
        assert!(got.contains(&("request", r"\x16\x03\x01".to_string())));
        assert!(!got.iter().any(|(k, _)| *k == "method"));
        let line = br#"10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "" 400 0 "-" "-""#;
        let got = run(Preset::Nginx, line).unwrap();
        assert!(got.contains(&("request", String::new())));
        let line = br#"10.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "GET  /x HTTP/1.1" 400 0 "-" "-""#;
        let got = run(Preset::Nginx, line).unwrap();
        assert!(got.contains(&("request", "GET  /x HTTP/1.1".to_string())));
    }

    #[test]
    fn common_format_and_trailing_fields() {
        let common = br#"127.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.0" 200 2326"#;
        let got = run(Preset::Apache, common).unwrap();
        assert_eq!(got.len(), 9);
        assert!(!got.iter().any(|(k, _)| *k == "referer"));

        let mut extended = NGINX_LINE.to_vec();
        extended.extend_from_slice(br#" "198.51.100.1""#);
        assert_eq!(
            run(Preset::Nginx, &extended),
            run(Preset::Nginx, NGINX_LINE)
        );
    }

    #[test]
    fn malformed_lines_fail() {
        let mut glued = NGINX_LINE.to_vec();
        glued.extend_from_slice(b"junk");
        let cases: Vec<&[u8]> = vec![
            b"",
            b" ",
            b"plain text",
            br#"1.2.3.4 - - [unterminated "GET / HTTP/1.1" 200 1 "-" "-""#,
            br#"1.2.3.4 - - [t] "GET / HTTP/1.1 200 1 "-" "-"#,
            br#"1.2.3.4 - - [t] "GET / HTTP/1.1" 2000 1 "-" "-""#,
            br#"1.2.3.4 - - [t] "GET / HTTP/1.1" 200 12k "-" "-""#,
            br#"1.2.3.4 - - [t] "GET / HTTP/1.1" 200 1 "-""#,
            br#"1.2.3.4 - - [t] "GET / HTTP/1.1" 200 1 "-" "agent\"#,
            br#"1.2.3.4  - - [t] "GET / HTTP/1.1" 200 1 "-" "-""#,
            br#"1.2.3.4 - - [t] "GET / HTTP/1.1" 200 1 "#,
            &glued,
        ];
        for line in cases {
            for preset in [Preset::Nginx, Preset::Apache] {
                assert_eq!(run(preset, line), None, "{}", String::from_utf8_lossy(line));
            }
        }
    }

    #[test]
    fn values_are_spans_of_the_body() {
        let body = Bytes::from_static(NGINX_LINE);
        let mut fields = Vec::new();
        assert!(Preset::Nginx.parse(&Text::owned(&body), 0, &mut fields));
        let range = body.as_ptr() as usize..body.as_ptr() as usize + body.len() + 1;
        assert!(
            fields
                .iter()
                .all(|f| range.contains(&(f.value.get(NO_CHUNKS).as_ptr() as usize)))
        );
    }
}
