//! Reads the Socket.IO event out of a captured Engine.IO message (development mode).
//!
//! An Engine.IO message packet is `4` followed by a Socket.IO packet:
//! `<type>[<attachments>-][/<namespace>,][<ack id>][<JSON array>]`; events are type `2`
//! (`5` with binary attachments, whose places hold `{"_placeholder":true,"num":n}`).

/// An event seen on the wire.
#[derive(Debug, Clone, PartialEq)]
pub struct WireEvent {
    /// Namespace path.
    pub nsp: String,
    /// The event name followed by its arguments (`["name", …]`).
    pub args: Vec<serde_json::Value>,
}

/// The event an Engine.IO packet carries, if it carries one. A message cut at the capture
/// limit keeps its name, its arguments replaced by a note.
pub fn event(packet: &[u8], truncated: bool) -> Option<WireEvent> {
    let rest = packet.strip_prefix(b"4")?;
    let (&kind, mut rest) = rest.split_first()?;
    match kind {
        b'2' => {}
        b'5' => {
            let dash = rest.iter().position(|&b| b == b'-')?;
            if !rest[..dash].iter().all(u8::is_ascii_digit) {
                return None;
            }
            rest = &rest[dash + 1..];
        }
        _ => return None,
    }
    let mut nsp = "/".to_owned();
    if rest.first() == Some(&b'/') {
        let comma = rest.iter().position(|&b| b == b',')?;
        nsp = String::from_utf8(rest[..comma].to_vec()).ok()?;
        rest = &rest[comma + 1..];
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    rest = &rest[digits..];
    match serde_json::from_slice::<Vec<serde_json::Value>>(rest) {
        Ok(args) if args.first().is_some_and(serde_json::Value::is_string) => {
            Some(WireEvent { nsp, args })
        }
        Ok(_) => None,
        Err(_) if truncated => {
            let name = leading_name(rest)?;
            Some(WireEvent {
                nsp,
                args: vec![
                    serde_json::Value::String(name),
                    serde_json::Value::String("(arguments too large to show)".into()),
                ],
            })
        }
        Err(_) => None,
    }
}

/// The event name at the start of a JSON array cut short.
fn leading_name(json: &[u8]) -> Option<String> {
    let rest = json.strip_prefix(b"[")?;
    let mut de = serde_json::Deserializer::from_slice(rest).into_iter::<String>();
    de.next()?.ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_of_every_shape() {
        let e = event(br#"42["hello",{"a":1}]"#, false).unwrap();
        assert_eq!(e.nsp, "/");
        assert_eq!(e.args, vec![json!("hello"), json!({"a": 1})]);
        let e = event(br#"42/notifications,17["notification",1]"#, false).unwrap();
        assert_eq!(e.nsp, "/notifications");
        assert_eq!(e.args[0], "notification");
        let e = event(
            br#"451-/admin,["bin",{"_placeholder":true,"num":0}]"#,
            false,
        )
        .unwrap();
        assert_eq!(e.nsp, "/admin");
        assert_eq!(e.args.len(), 2);
        assert!(event(b"40", false).is_none());
        assert!(event(br#"43["ack"]"#, false).is_none());
        assert!(event(br#"2probe"#, false).is_none());
        assert!(event(br#"42[1,2]"#, false).is_none());
        let cut = event(br#"42["big","xxxxxxx"#, true).unwrap();
        assert_eq!(cut.args[0], "big");
        assert!(event(br#"42["big","xxxxxxx"#, false).is_none());
    }
}
