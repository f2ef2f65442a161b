//! Who may do what: each client is known by its certificate's common name (its
//! identity), and a node's grants say what each identity may do on which streams.
//!
//! A grant names identities (exactly, or a pattern with `*`: `gateway-*`), streams
//! (`scope/stream` patterns, `*` matching any run of name characters, `{identity}`
//! standing for the client's identity: `factory-3/sensors-{identity}`) and what it
//! allows there, any of:
//!
//! | verb | requests |
//! |---|---|
//! | `create` | creating the stream (and its scope) |
//! | `write` | appends, large events, writer positions |
//! | `mirror` | mirroring an edge stream into it (replication), reporting its lag |
//! | `read` | reading its segments, reader groups on it |
//!
//! Any verb on a stream allows describing it, its tail, and listing its scope's streams.
//! Grants add up. Anything else — listing scopes, deleting, scaling, sealing or
//! truncating streams, raw segments — needs `admin`. Without any grant configured every
//! client the CA signed may do everything: the development default, kept only by a node
//! on its development PKI (see [`crate::node::config`]).

use crate::stream::{
    is_large_event_segment, name_matches as glob, segment_stream, LARGE_EVENT_PREFIX,
};
use crate::wire::Request;

/// What a grant allows on its streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    /// Create the stream (and its scope).
    Create,
    /// Append events.
    Write,
    /// Mirror an edge stream into it.
    Mirror,
    /// Read it, alone or in reader groups.
    Read,
}

impl Verb {
    /// Every verb, in the order of the table above.
    pub const ALL: [Verb; 4] = [Verb::Create, Verb::Write, Verb::Mirror, Verb::Read];

    /// The verb's name in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Verb::Create => "create",
            Verb::Write => "write",
            Verb::Mirror => "mirror",
            Verb::Read => "read",
        }
    }

    /// The verb named `name`.
    pub fn parse(name: &str) -> Option<Verb> {
        Verb::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// What some identities may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grant {
    /// The identities: exact, or a pattern with `*`.
    pub identity: String,
    /// Everything.
    pub admin: bool,
    /// Streams: `scope/stream` patterns (`*`, `{identity}`).
    pub streams: Vec<String>,
    /// What it allows on them.
    pub allow: Vec<Verb>,
}

impl Grant {
    fn covers(&self, identity: &str) -> bool {
        glob(&self.identity, identity)
    }

    /// The grant's stream patterns for `identity`, as (scope, stream) patterns. An
    /// identity that is no valid name part matches no `{identity}` pattern.
    fn patterns<'a>(&'a self, identity: &'a str) -> impl Iterator<Item = (String, String)> + 'a {
        let usable = crate::stream::validate_scoped_name(identity).is_ok();
        self.streams.iter().filter_map(move |p| {
            if p.contains("{identity}") && !usable {
                return None;
            }
            let p = p.replace("{identity}", identity);
            p.split_once('/')
                .map(|(s, t)| (s.to_string(), t.to_string()))
        })
    }

    fn allows(&self, verbs: &[Verb]) -> bool {
        verbs.is_empty() || self.allow.iter().any(|v| verbs.contains(v))
    }

    fn stream(&self, identity: &str, scope: &str, stream: &str, verbs: &[Verb]) -> bool {
        self.allows(verbs)
            && self
                .patterns(identity)
                .any(|(s, t)| glob(&s, scope) && glob(&t, stream))
    }

    fn scope(&self, identity: &str, scope: &str, verbs: &[Verb]) -> bool {
        self.allows(verbs) && self.patterns(identity).any(|(s, _)| glob(&s, scope))
    }
}

/// Who a request needs rights on, and which.
enum Need<'a> {
    Nothing,
    Admin(String),
    /// One of `verbs` (none: any) on the stream.
    Stream(&'a str, &'a str, &'static [Verb]),
    /// One of `verbs` (none: any) on a stream of the scope.
    Scope(&'a str, &'static [Verb]),
    /// One of `verbs` on every stream of a stream set (names and patterns): a pattern
    /// needs a grant whose pattern covers it.
    Set(&'a str, Vec<&'a str>, &'static [Verb]),
    /// One of `verbs` on the segment's stream; a large event's temporary segment if
    /// `temp` (its merge target is checked itself) and the identity may write.
    Segment(&'a str, &'static [Verb], bool),
    /// A large event's temporary segment only.
    Temp(&'a str),
    /// Write on the target, and the source is a temporary segment.
    Merge(&'a str, &'a str),
    /// Mirror on each stream.
    Mirrors(Vec<&'a str>),
}

const ANY: &[Verb] = &[];
const CREATE: &[Verb] = &[Verb::Create];
const WRITE: &[Verb] = &[Verb::Write];
const MIRROR: &[Verb] = &[Verb::Mirror];
const READ: &[Verb] = &[Verb::Read];

fn need(req: &Request) -> Need<'_> {
    use Request as R;
    match req {
        R::Hello { .. } => Need::Nothing,
        R::CreateStream { scope, stream, .. } => Need::Stream(scope, stream, CREATE),
        R::DescribeStream { scope, stream } | R::StreamTail { scope, stream } => {
            Need::Stream(scope, stream, ANY)
        }
        R::WriterPositions { scope, stream, .. } => Need::Stream(scope, stream, WRITE),
        R::MirrorStream { scope, stream, .. } => Need::Stream(scope, stream, MIRROR),
        R::CreateReaderGroup { scope, streams, .. } => {
            Need::Set(scope, streams.split(',').map(str::trim).collect(), READ)
        }
        R::CreateScope { scope } => Need::Scope(scope, &[Verb::Create, Verb::Mirror]),
        R::ListStreams { scope } => Need::Scope(scope, ANY),
        R::DeleteReaderGroup { scope, .. }
        | R::SyncReader { scope, .. }
        | R::DescribeReaderGroup { scope, .. }
        | R::Checkpoint { scope, .. }
        | R::GroupPosition { scope, .. } => Need::Scope(scope, READ),
        R::SetupAppend { segment, .. } => Need::Segment(segment, WRITE, true),
        R::SetupMirror { segment } => Need::Segment(segment, MIRROR, false),
        R::Read { segment, .. } => Need::Segment(segment, READ, true),
        R::SegmentInfo { segment } => Need::Segment(segment, ANY, true),
        R::CreateSegment { segment }
        | R::SealSegment { segment }
        | R::DeleteSegment { segment } => Need::Temp(segment),
        R::MergeSegments { target, source } | R::MergeWithAttributes { target, source, .. } => {
            Need::Merge(target, source)
        }
        R::ReportReplication { streams } => {
            Need::Mirrors(streams.iter().map(|l| l.stream.as_str()).collect())
        }
        R::ListScopes => Need::Admin("listing scopes".into()),
        R::DeleteScope { scope } => Need::Admin(format!("deleting scope {scope}")),
        R::UpdateStream { scope, stream, .. }
        | R::ScaleStream { scope, stream, .. }
        | R::SealStream { scope, stream }
        | R::TruncateStream { scope, stream, .. }
        | R::DeleteStream { scope, stream } => {
            Need::Admin(format!("changing stream {scope}/{stream} (needs admin)"))
        }
        R::TruncateSegment { segment, .. } => Need::Admin(format!("truncating {segment}")),
    }
}

fn verbs_text(verbs: &[Verb]) -> String {
    if verbs.is_empty() {
        return "any right".into();
    }
    verbs
        .iter()
        .map(|v| v.name())
        .collect::<Vec<_>>()
        .join(" or ")
}

/// The grants of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Access {
    /// `None`: no grants configured, every authenticated client may do everything.
    grants: Option<Vec<Grant>>,
}

impl Access {
    /// Every authenticated client may do everything.
    pub fn open() -> Self {
        Access::default()
    }

    /// Only what `grants` allow (none: nothing for anyone).
    pub fn granted(grants: Vec<Grant>) -> Self {
        Access {
            grants: Some(grants),
        }
    }

    /// Whether grants are enforced.
    pub fn is_restricted(&self) -> bool {
        self.grants.is_some()
    }

    /// Whether every request but the handshake is refused (grants enforced, none
    /// given).
    pub fn refuses_all(&self) -> bool {
        self.grants.as_ref().is_some_and(Vec::is_empty)
    }

    /// Checks that `identity` may make `req`; the error says what was refused.
    pub fn check(&self, identity: &str, req: &Request) -> Result<(), String> {
        let Some(grants) = &self.grants else {
            return Ok(());
        };
        let mine: Vec<&Grant> = grants.iter().filter(|g| g.covers(identity)).collect();
        if mine.iter().any(|g| g.admin) {
            return Ok(());
        }
        let stream = |scope: &str, stream: &str, verbs: &[Verb]| {
            mine.iter()
                .any(|g| g.stream(identity, scope, stream, verbs))
        };
        let writes_somewhere = || mine.iter().any(|g| g.allow.contains(&Verb::Write));
        let segment = |name: &str, verbs: &[Verb], temp: bool| {
            if is_large_event_segment(name) {
                return temp && writes_somewhere();
            }
            segment_stream(name).is_some_and(|(scope, s)| stream(scope, s, verbs))
        };
        let (allowed, what) = match need(req) {
            Need::Nothing => (true, String::new()),
            Need::Admin(what) => (false, what),
            Need::Stream(scope, s, verbs) => (
                stream(scope, s, verbs),
                format!("{} on stream {scope}/{s}", verbs_text(verbs)),
            ),
            // A grant's pattern covers a set's pattern if it matches it as a name: its
            // literal parts can only match the set's literal characters.
            Need::Set(scope, parts, verbs) => match parts.iter().find(|t| !stream(scope, t, verbs))
            {
                Some(t) => (
                    false,
                    format!("{} on stream {scope}/{t}", verbs_text(verbs)),
                ),
                None => (true, String::new()),
            },
            Need::Scope(scope, verbs) => (
                mine.iter().any(|g| g.scope(identity, scope, verbs)),
                format!("{} in scope {scope}", verbs_text(verbs)),
            ),
            Need::Segment(name, verbs, temp) => (
                segment(name, verbs, temp),
                format!("{} on segment {name}", verbs_text(verbs)),
            ),
            Need::Temp(name) => (
                name.starts_with(LARGE_EVENT_PREFIX) && writes_somewhere(),
                format!("segment {name}"),
            ),
            Need::Merge(target, source) => (
                segment(target, WRITE, false) && is_large_event_segment(source),
                format!("merging {source} into {target}"),
            ),
            Need::Mirrors(streams) => match streams.iter().find(|s| {
                s.split_once('/')
                    .is_none_or(|(scope, t)| !stream(scope, t, MIRROR))
            }) {
                Some(s) => (false, format!("mirror on stream {s}")),
                None => (true, String::new()),
            },
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

    fn grant(identity: &str, streams: &[&str], allow: &[Verb]) -> Grant {
        Grant {
            identity: identity.into(),
            admin: false,
            streams: streams.iter().map(ToString::to_string).collect(),
            allow: allow.to_vec(),
        }
    }

    fn access() -> Access {
        Access::granted(vec![
            grant(
                "edge-1",
                &["site/*", "other/temps"],
                &[Verb::Create, Verb::Write, Verb::Mirror],
            ),
            Grant {
                identity: "ops".into(),
                admin: true,
                ..Grant::default()
            },
            // Each gateway mirrors into its own streams only.
            grant("gateway-*", &["factory-3/*-{identity}"], &[Verb::Mirror]),
            grant("analyst", &["factory-3/sensors-*"], &[Verb::Read]),
        ])
    }

    fn mirror(s: &str) -> Request {
        Request::SetupMirror {
            segment: s.to_string(),
        }
    }

    fn read(s: &str) -> Request {
        Request::Read {
            segment: s.to_string(),
            offset: 0,
            max_len: 1,
            wait_ms: 0,
        }
    }

    fn append(s: &str) -> Request {
        Request::SetupAppend {
            segment: s.to_string(),
            writer_id: 1,
        }
    }

    #[test]
    fn grants_cover_their_streams_only() {
        let a = access();
        assert!(a.check("edge-1", &mirror("site/x/0.#epoch.0")).is_ok());
        assert!(a.check("edge-1", &mirror("other/temps/0.#epoch.0")).is_ok());
        let e = a
            .check("edge-1", &mirror("other/video/0.#epoch.0"))
            .expect_err("refused");
        assert!(e.contains("edge-1") && e.contains("other/video"), "{e}");
        assert!(a.check("stranger", &mirror("site/x/0.#epoch.0")).is_err());
        assert!(a.check("ops", &mirror("any/thing/0.#epoch.0")).is_ok());
        assert!(a.check("edge-1", &Request::ListScopes).is_err());
        let del = Request::DeleteStream {
            scope: "site".into(),
            stream: "x".into(),
        };
        assert!(a.check("edge-1", &del).is_err());
        assert!(Access::open().check("anyone", &del).is_ok());
        // With no grant at all, nobody may do anything.
        assert!(Access::granted(vec![])
            .check("edge-1", &mirror("site/x/0.#epoch.0"))
            .is_err());
        // A large event's temporary segment: any identity that may write; its merge
        // target must be granted.
        let merge = |t: &str| Request::MergeSegments {
            target: t.into(),
            source: format!("{LARGE_EVENT_PREFIX}00"),
        };
        assert!(a.check("edge-1", &merge("site/x/0.#epoch.0")).is_ok());
        assert!(a.check("edge-1", &merge("no/x/0.#epoch.0")).is_err());
        assert!(a
            .check("gateway-1", &append(&format!("{LARGE_EVENT_PREFIX}00")))
            .is_err());
        // A mirror session never goes into a temporary segment.
        assert!(a
            .check("edge-1", &mirror(&format!("{LARGE_EVENT_PREFIX}00")))
            .is_err());
    }

    #[test]
    fn each_verb_is_granted_on_its_own_and_identity_patterns_stay_per_identity() {
        let a = access();
        // gateway-1 may mirror into its own streams, and nothing else.
        assert!(a
            .check(
                "gateway-1",
                &mirror("factory-3/sensors-gateway-1/0.#epoch.0")
            )
            .is_ok());
        let e = a
            .check(
                "gateway-1",
                &mirror("factory-3/sensors-gateway-2/0.#epoch.0"),
            )
            .expect_err("another gateway's stream");
        assert!(
            e.contains("mirror on segment factory-3/sensors-gateway-2"),
            "{e}"
        );
        let e = a
            .check("gateway-1", &read("factory-3/sensors-gateway-1/0.#epoch.0"))
            .expect_err("mirroring is not reading");
        assert!(e.contains("read on segment"), "{e}");
        assert!(a
            .check(
                "gateway-1",
                &append("factory-3/sensors-gateway-1/0.#epoch.0")
            )
            .is_err());
        // The analyst reads every gateway's sensors, and writes nothing.
        assert!(a
            .check("analyst", &read("factory-3/sensors-gateway-2/0.#epoch.0"))
            .is_ok());
        let e = a
            .check("analyst", &append("factory-3/sensors-gateway-2/0.#epoch.0"))
            .expect_err("reading is not writing");
        assert!(e.contains("write on segment"), "{e}");
        assert!(a
            .check("analyst", &read("factory-3/camera-gateway-2/0.#epoch.0"))
            .is_err());
        let describe = Request::DescribeStream {
            scope: "factory-3".into(),
            stream: "sensors-gateway-2".into(),
        };
        assert!(a.check("analyst", &describe).is_ok());
        assert!(a.check("gateway-1", &describe).is_err());
        let group = Request::SyncReader {
            scope: "factory-3".into(),
            group: "g".into(),
            reader: "r".into(),
            report: Default::default(),
            leave: false,
        };
        assert!(a.check("analyst", &group).is_ok());
        assert!(a.check("gateway-1", &group).is_err());
        // A reader group over a stream set: every name and pattern must be covered.
        let set = |streams: &str| Request::CreateReaderGroup {
            scope: "factory-3".into(),
            group: "g".into(),
            streams: streams.into(),
            from: crate::wire::StartFrom::Head,
        };
        assert!(a.check("analyst", &set("sensors-*")).is_ok());
        assert!(a.check("analyst", &set("sensors-gw-*,sensors-a")).is_ok());
        let e = a
            .check("analyst", &set("sensors-a,*"))
            .expect_err("a wider pattern");
        assert!(e.contains("read on stream factory-3/*"), "{e}");
        assert!(a.check("analyst", &set("*-gw-1")).is_err());
        // An identity that is no name part never matches a {identity} pattern.
        assert!(a
            .check(
                "gateway-*",
                &mirror("factory-3/sensors-gateway-*/0.#epoch.0")
            )
            .is_err());
        assert!(glob("a*b*c", "a-b-b-c") && !glob("a*b", "a-c") && glob("*", ""));
    }
}
