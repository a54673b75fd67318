//! Reason codes: each `…-FAILED` packet has its own closed set, plus `Other` for codes a newer
//! peer may send.

/// Declares a reason enum with its wire codes.
macro_rules! reasons {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $code:literal),* $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
            /// A code this side does not know.
            Other(String),
        }

        impl $name {
            /// The wire code.
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$variant => $code,)*
                    $name::Other(code) => code,
                }
            }

            /// Reads a wire code.
            pub fn parse(code: &str) -> $name {
                match code {
                    $($code => $name::$variant,)*
                    other => $name::Other(other.to_owned()),
                }
            }

            /// Every known code.
            pub const ALL: &'static [&'static str] = &[$($code),*];
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Declares a packet body struct whose fields map one-to-one to packet fields.
///
/// Field kinds: `text`, `opt_text`, `u64`, `opt_u64`, `u16`, `time`, `flag`, `(reason Type)`,
/// `(opt_reason Type)`.
macro_rules! body {
    ($(#[$meta:meta])* $name:ident = $verb:literal {
        $($(#[$fmeta:meta])* $field:ident : $kind:tt = $key:literal),* $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: body!(@ty $kind),)*
        }

        impl $crate::proto::Body for $name {
            const VERB: &'static str = $verb;

            #[allow(unused_variables)]
            fn read(r: &$crate::proto::FieldReader<'_>) -> Result<Self, $crate::proto::ProtoError> {
                Ok($name { $($field: body!(@read r $kind $key),)* })
            }

            #[allow(unused_variables)]
            fn write(&self, p: &mut $crate::packet::Packet) {
                $(body!(@write p $kind $key self.$field);)*
            }
        }
    };
    (@ty text) => { String };
    (@ty opt_text) => { Option<String> };
    (@ty u64) => { u64 };
    (@ty opt_u64) => { Option<u64> };
    (@ty u16) => { u16 };
    (@ty time) => { time::OffsetDateTime };
    (@ty flag) => { bool };
    (@ty (reason $t:ty)) => { $t };
    (@ty (opt_reason $t:ty)) => { Option<$t> };
    (@read $r:ident text $key:literal) => { $r.text($key)? };
    (@read $r:ident opt_text $key:literal) => { $r.opt_text($key) };
    (@read $r:ident u64 $key:literal) => { $r.number::<u64>($key)? };
    (@read $r:ident opt_u64 $key:literal) => { $r.opt_number::<u64>($key)? };
    (@read $r:ident u16 $key:literal) => { $r.number::<u16>($key)? };
    (@read $r:ident time $key:literal) => { $r.time($key)? };
    (@read $r:ident flag $key:literal) => { $r.flag($key)? };
    (@read $r:ident (reason $t:ty) $key:literal) => { <$t>::parse(&$r.text($key)?) };
    (@read $r:ident (opt_reason $t:ty) $key:literal) => { $r.opt_text($key).map(|c| <$t>::parse(&c)) };
    (@write $p:ident text $key:literal $v:expr) => { $p.fields.set($key, $v.as_str()) };
    (@write $p:ident opt_text $key:literal $v:expr) => { $p.fields.set_opt($key, $v.as_deref()) };
    (@write $p:ident u64 $key:literal $v:expr) => { $p.fields.set($key, $v.to_string()) };
    (@write $p:ident opt_u64 $key:literal $v:expr) => { $p.fields.set_opt($key, $v.map(|n| n.to_string())) };
    (@write $p:ident u16 $key:literal $v:expr) => { $p.fields.set($key, $v.to_string()) };
    (@write $p:ident time $key:literal $v:expr) => { $p.fields.set($key, $crate::timestamp::format($v)) };
    (@write $p:ident flag $key:literal $v:expr) => { $p.fields.set($key, if $v { "true" } else { "false" }) };
    (@write $p:ident (reason $t:ty) $key:literal $v:expr) => { $p.fields.set($key, $v.as_str()) };
    (@write $p:ident (opt_reason $t:ty) $key:literal $v:expr) => { $p.fields.set_opt($key, $v.as_ref().map(|r| r.as_str())) };
}

/// Declares the two answers to a request about one address: `VERB-OK id=` and
/// `VERB-FAILED id= reason=` (both →C), with `Failed::new(id, reason)`.
macro_rules! id_answers {
    ($ok:ident = $ok_verb:literal, $failed:ident = $failed_verb:literal ($reason:ident)) => {
        body! {
            #[doc = concat!("`", $ok_verb, " id=` (→C).")]
            $ok = $ok_verb { id: text = "id" }
        }
        body! {
            #[doc = concat!("`", $failed_verb, " id= reason=` (→C).")]
            $failed = $failed_verb { id: text = "id", reason: (reason $reason) = "reason" }
        }
        impl $failed {
            /// The failure answer about address `id`.
            pub fn new(id: &str, reason: $reason) -> $failed {
                $failed {
                    id: id.to_owned(),
                    reason,
                }
            }
        }
    };
}
