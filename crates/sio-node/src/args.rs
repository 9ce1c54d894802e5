//! Any number of event arguments, of any value type (`serde_json::Value` for the admin UI,
//! `rmpv::Value` for the conformance server, which must keep binary as it came).

use std::marker::PhantomData;

use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Every argument of a Socket.IO event: deserialized from, and serialized to, the event's
/// separate arguments (socketioxide's parser treats a tuple as the argument list, and hands
/// over every argument, not just the first, when a tuple is asked for).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Args<V>(pub Vec<V>);

impl<V: Serialize> Serialize for Args<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(self.0.len())?;
        for v in &self.0 {
            t.serialize_element(v)?;
        }
        t.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Args<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ArgsVisitor<V>(PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for ArgsVisitor<V> {
            type Value = Args<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("event arguments")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Args<V>, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Args(out))
            }
        }
        d.deserialize_tuple(usize::MAX, ArgsVisitor(PhantomData))
    }
}
