//! Who may do what: each client is known by its certificate's common name (its
//! identity), and a node's grants say which streams each identity may use. Without any
//! grant every client the CA signed may do everything (the development default).
//!
//! A grant names streams as `scope/stream` or `scope/*`. On those streams an identity
//! may create, describe, write (appends, large events, mirroring) and read, and use
//! reader groups and list streams in their scopes. Anything else — listing scopes,
//! deleting, scaling, sealing or truncating streams, raw segments — needs `admin`.

use std::collections::BTreeMap;

use crate::stream::{is_large_event_segment, segment_stream, LARGE_EVENT_PREFIX};
use crate::wire::Request;

/// What one identity may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// Everything.
    pub admin: bool,
    /// Streams it may use: `scope/stream` or `scope/*`.
    pub streams: Vec<String>,
}

impl Grant {
    fn stream(&self, scope: &str, stream: &str) -> bool {
        self.admin
            || self.streams.iter().any(|p| match p.split_once('/') {
                Some((s, "*")) => s == scope,
                Some((s, t)) => s == scope && t == stream,
                None => false,
            })
    }

    fn scope(&self, scope: &str) -> bool {
        self.admin
            || self
                .streams
                .iter()
                .any(|p| p.split_once('/').is_some_and(|(s, _)| s == scope))
    }

    /// A segment by name: a stream's segment if the stream is granted; the temporary
    /// segment of a large event if `temp` (whose merge target is checked itself).
    fn segment(&self, name: &str, temp: bool) -> bool {
        if is_large_event_segment(name) {
            return (temp && !self.streams.is_empty()) || self.admin;
        }
        match segment_stream(name) {
            Some((scope, stream)) => self.stream(scope, stream),
            None => self.admin,
        }
    }
}

/// The grants of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// `None`: no grants configured, every authenticated client may do everything.
    grants: Option<BTreeMap<String, Grant>>,
}

impl Access {
    /// Every authenticated client may do everything.
    pub fn open() -> Self {
        Access::default()
    }

    /// Only what `grants` allow, per identity.
    pub fn granted(grants: BTreeMap<String, Grant>) -> Self {
        Access {
            grants: Some(grants),
        }
    }

    /// Whether grants are enforced.
    pub fn is_restricted(&self) -> bool {
        self.grants.is_some()
    }

    /// Checks that `identity` may make `req`; the error says what was refused.
    pub fn check(&self, identity: &str, req: &Request) -> Result<(), String> {
        let Some(grants) = &self.grants else {
            return Ok(());
        };
        let none = Grant::default();
        let g = grants.get(identity).unwrap_or(&none);
        if g.admin {
            return Ok(());
        }
        use Request as R;
        let (allowed, what) = match req {
            R::Hello { .. } => (true, String::new()),
            R::CreateStream { scope, stream, .. }
            | R::DescribeStream { scope, stream }
            | R::StreamTail { scope, stream }
            | R::WriterPositions { scope, stream, .. }
            | R::MirrorStream { scope, stream, .. } => {
                (g.stream(scope, stream), format!("stream {scope}/{stream}"))
            }
            R::CreateReaderGroup { scope, stream, .. } => {
                (g.stream(scope, stream), format!("stream {scope}/{stream}"))
            }
            R::CreateScope { scope }
            | R::ListStreams { scope }
            | R::DeleteReaderGroup { scope, .. }
            | R::SyncReader { scope, .. }
            | R::DescribeReaderGroup { scope, .. }
            | R::Checkpoint { scope, .. }
            | R::GroupPosition { scope, .. } => (g.scope(scope), format!("scope {scope}")),
            R::SetupAppend { segment, .. }
            | R::SetupMirror { segment }
            | R::Read { segment, .. }
            | R::SegmentInfo { segment }
            | R::CreateSegment { segment }
            | R::SealSegment { segment }
            | R::DeleteSegment { segment } => {
                let temp = !matches!(req, R::SetupMirror { .. });
                // Sealing or deleting a stream's segment is not writing to it.
                let destructive = matches!(req, R::SealSegment { .. } | R::DeleteSegment { .. });
                let ok = if destructive {
                    segment.starts_with(LARGE_EVENT_PREFIX)
                } else {
                    g.segment(segment, temp)
                };
                (ok, format!("segment {segment}"))
            }
            R::MergeSegments { target, source } | R::MergeWithAttributes { target, source, .. } => {
                (
                    g.segment(target, false) && is_large_event_segment(source),
                    format!("merging {source} into {target}"),
                )
            }
            R::ReportReplication { streams } => {
                let bad = streams.iter().find(|l| {
                    l.stream
                        .split_once('/')
                        .is_none_or(|(s, t)| !g.stream(s, t))
                });
                match bad {
                    Some(l) => (false, format!("stream {}", l.stream)),
                    None => (true, String::new()),
                }
            }
            R::ListScopes => (false, "listing scopes".into()),
            R::DeleteScope { scope } => (false, format!("deleting scope {scope}")),
            R::UpdateStream { scope, stream, .. }
            | R::ScaleStream { scope, stream, .. }
            | R::SealStream { scope, stream }
            | R::TruncateStream { scope, stream, .. }
            | R::DeleteStream { scope, stream } => (
                false,
                format!("changing stream {scope}/{stream} (needs admin)"),
            ),
            R::TruncateSegment { segment, .. } => (false, format!("truncating {segment}")),
        };
        if allowed {
            Ok(())
        } else {
            Err(format!("identity {identity:?} is not granted {what}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access() -> Access {
        Access::granted(BTreeMap::from([
            (
                "edge-1".to_string(),
                Grant {
                    admin: false,
                    streams: vec!["site/*".into(), "other/temps".into()],
                },
            ),
            (
                "ops".to_string(),
                Grant {
                    admin: true,
                    streams: vec![],
                },
            ),
        ]))
    }

    fn seg(s: &str) -> Request {
        Request::SetupMirror {
            segment: s.to_string(),
        }
    }

    #[test]
    fn grants_cover_their_streams_only() {
        let a = access();
        assert!(a.check("edge-1", &seg("site/x/0.#epoch.0")).is_ok());
        assert!(a.check("edge-1", &seg("other/temps/0.#epoch.0")).is_ok());
        let e = a
            .check("edge-1", &seg("other/video/0.#epoch.0"))
            .expect_err("refused");
        assert!(e.contains("edge-1") && e.contains("other/video"), "{e}");
        assert!(a.check("stranger", &seg("site/x/0.#epoch.0")).is_err());
        assert!(a.check("ops", &seg("any/thing/0.#epoch.0")).is_ok());
        assert!(a.check("edge-1", &Request::ListScopes).is_err());
        let del = Request::DeleteStream {
            scope: "site".into(),
            stream: "x".into(),
        };
        assert!(a.check("edge-1", &del).is_err());
        assert!(Access::open().check("anyone", &del).is_ok());
        // A large event's temporary segment: any granted writer; its merge target must
        // be granted.
        let merge = |t: &str| Request::MergeSegments {
            target: t.into(),
            source: format!("{LARGE_EVENT_PREFIX}00"),
        };
        assert!(a.check("edge-1", &merge("site/x/0.#epoch.0")).is_ok());
        assert!(a.check("edge-1", &merge("no/x/0.#epoch.0")).is_err());
        // A mirror session never goes into a temporary segment.
        assert!(a
            .check("edge-1", &seg(&format!("{LARGE_EVENT_PREFIX}00")))
            .is_err());
    }
}
