//! Validation of the network inputs (`sources[]` entries with `type: syslog | http | otlp`): where
//! they listen, and the file-source settings they cannot have.

use std::path::PathBuf;
use std::sync::Arc;

use super::raw::{RawSource, RawSourceType};
use super::validate::Validator;
use super::{ConfigError, Format, Listen, NetInputConfig, NetProtocol, ParserConfig, SourceConfig};

/// Stream connections a network input keeps open at once unless `max_connections`
/// says otherwise.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// The largest request body an `http` input takes unless `max_body_size` says
/// otherwise.
pub const DEFAULT_MAX_BODY: usize = 10 << 20;

impl Validator {
    /// A network input at `prefix` (its sink is checked by the caller). File settings
    /// (globs, selector, format, multiline, symlinks) are refused rather than ignored,
    /// and so is a parser: the protocol decides how messages are read.
    pub(crate) fn net_source(
        &self,
        prefix: &str,
        s: &RawSource,
    ) -> Result<SourceConfig, ConfigError> {
        let field = |f: &str| format!("{prefix}.{f}");
        let (protocol, parser) = match s.kind {
            RawSourceType::Syslog => (NetProtocol::Syslog, ParserConfig::Syslog),
            RawSourceType::Http => (NetProtocol::Http, ParserConfig::Json),
            // The input decodes the fields; the body is kept as the sender gave it.
            RawSourceType::Otlp => (NetProtocol::Otlp, ParserConfig::None),
            RawSourceType::File => unreachable!("file sources are validated elsewhere"),
        };
        let file_only = [
            ("include", !s.include.is_empty()),
            ("exclude", !s.exclude.is_empty()),
            ("selector", s.selector.is_some()),
            ("container_paths", !s.container_paths.is_empty()),
            ("format", s.format.is_some()),
            ("multiline", s.multiline.is_some()),
            ("follow_symlinks", s.follow_symlinks),
            ("allowed_roots", !s.allowed_roots.is_empty()),
            ("parser", s.parser.is_some()),
        ];
        if let Some((name, _)) = file_only.iter().find(|(_, set)| *set) {
            return Err(self.invalid(
                &field(name),
                "not for a network input (type: syslog | http | otlp): messages are framed and parsed as the protocol says".into(),
            ));
        }
        let listen = match &s.listen {
            Some(text) => self.listen(&field("listen"), text)?,
            None => {
                return Err(self.invalid(
                    &field("listen"),
                    "required for a network input (tcp://host:port; syslog also udp://host:port or unix:///path)"
                        .into(),
                ));
            }
        };
        if protocol != NetProtocol::Syslog && !matches!(listen, Listen::Tcp(_)) {
            return Err(self.invalid(
                &field("listen"),
                "an http or otlp input listens on tcp://host:port".into(),
            ));
        }
        let max_body_bytes = match (&s.max_body_size, protocol) {
            (None, _) => DEFAULT_MAX_BODY,
            (Some(_), NetProtocol::Syslog) => {
                return Err(self.invalid(
                    &field("max_body_size"),
                    "only for type: http or otlp".into(),
                ));
            }
            (Some(text), NetProtocol::Http | NetProtocol::Otlp) => {
                let n = super::parse_size(text)
                    .map_err(|e| self.invalid(&field("max_body_size"), e))?;
                if n == 0 {
                    return Err(
                        self.invalid(&field("max_body_size"), "must be greater than zero".into())
                    );
                }
                n as usize
            }
        };
        let max_connections = s.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if max_connections == 0 {
            return Err(self.invalid(&field("max_connections"), "must be at least 1".into()));
        }
        Ok(SourceConfig {
            format: Format::Message,
            max_line_bytes: self.max_line_size(prefix, &s.max_line_size)?,
            parser,
            processors: self.processors(prefix, &s.processors)?,
            input: Some(NetInputConfig {
                protocol,
                listen,
                max_connections,
                max_body_bytes,
            }),
            ..SourceConfig::new(&s.name, Vec::new(), &s.sink)
        })
    }

    /// `tcp://host:port`, `udp://host:port` (an IP address: no name is resolved at
    /// start-up) or `unix:///absolute/path`.
    pub(crate) fn listen(&self, field: &str, text: &str) -> Result<Listen, ConfigError> {
        let bad = |why: &str| self.invalid(field, format!("{text:?}: {why}"));
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| bad("expected tcp://host:port, udp://host:port or unix:///path"))?;
        match scheme {
            "tcp" | "udp" => {
                let addr = rest
                    .parse()
                    .map_err(|_| bad("expected an IP address and a port, e.g. 127.0.0.1:5514"))?;
                Ok(if scheme == "tcp" {
                    Listen::Tcp(addr)
                } else {
                    Listen::Udp(addr)
                })
            }
            "unix" => {
                if !rest.starts_with('/') || rest.ends_with('/') || rest.contains('\0') {
                    return Err(bad(
                        "expected an absolute socket path, e.g. unix:///run/logtap/log",
                    ));
                }
                Ok(Listen::Unix(PathBuf::from(rest)))
            }
            _ => Err(bad("the scheme must be tcp, udp or unix")),
        }
    }

    /// No two network inputs listen at the same place.
    pub(crate) fn distinct_listeners(&self, sources: &[SourceConfig]) -> Result<(), ConfigError> {
        let mut seen: Vec<(&Listen, &Arc<str>)> = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            let Some(input) = &s.input else { continue };
            if let Some((_, other)) = seen.iter().find(|(l, _)| **l == input.listen) {
                return Err(self.invalid(
                    &format!("sources[{i}].listen"),
                    format!("{} is also where source {other:?} listens", input.listen),
                ));
            }
            seen.push((&input.listen, &s.name));
        }
        Ok(())
    }
}
