//! Property tests of everything the sidecar parses from a client's request line before a turn
//! exists: the object route, the call chain a peer sends, ids and names. Arbitrary input never
//! panics, and what parses means what it says. Bounded: a fixed number of cases per property.

use http::Method;
use proptest::prelude::*;
use stead_core::{ClassName, ObjectId, ObjectName};
use stead_sidecar::chain::CallChain;
use stead_sidecar::target::{Target, parse_route};

const SLOTS: u32 = 4096;

fn known(c: &str) -> bool {
    c == "Counter" || c == "ChatRoom"
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::OPTIONS),
        Just(Method::CONNECT),
    ]
}

/// Paths that look like object routes, with hostile pieces mixed in.
fn path() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just(String::new()),
        Just("Counter".to_owned()),
        Just("name".to_owned()),
        Just("id".to_owned()),
        Just("new-id".to_owned()),
        Just("..".to_owned()),
        Just("%2F".to_owned()),
        Just("%ff%fe".to_owned()),
        Just("%".to_owned()),
        Just("*".to_owned()),
        "[0-9a-f]{64}",
        "[a-zA-Z0-9_%.~-]{0,40}",
        any::<String>(),
    ];
    (prop::collection::vec(segment, 0..7), any::<bool>()).prop_map(|(segs, objects)| {
        let tail = segs.join("/");
        if objects {
            format!("/objects/{tail}")
        } else {
            format!("/{tail}")
        }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_route_parses_or_is_refused_with_a_json_error(m in method(), p in path(), q in proptest::option::of(any::<String>())) {
        match parse_route(&m, &p, q.as_deref(), SLOTS, known) {
            Ok(Target::Object { object, rest }) => {
                prop_assert!(p.starts_with("/objects/"));
                prop_assert!(known(object.class.as_str()));
                prop_assert!(rest.starts_with('/'));
                prop_assert!(object.slot.0 < SLOTS);
                prop_assert_eq!(object.id.slot(SLOTS), object.slot);
                if let Some(name) = &object.name {
                    prop_assert_eq!(ObjectId::named(&object.class, name), object.id);
                }
            }
            Ok(Target::NewId { class }) => {
                prop_assert_eq!(m, Method::POST);
                prop_assert!(known(class.as_str()));
            }
            Ok(Target::Stateless) => prop_assert!(!p.starts_with("/objects/")),
            Err(e) => {
                prop_assert!(e.status.is_client_error(), "{} for {p}", e.status);
                prop_assert!(!e.message.is_empty());
                let body: serde_json::Value = serde_json::from_slice(e.clone().into_http().body()).unwrap();
                prop_assert_eq!(body["error"]["code"].as_str(), Some(e.code));
            }
        }
    }

    #[test]
    fn a_percent_encoded_name_reaches_the_object_it_names(name in "\\PC{1,64}", rest in "[a-z/]{0,20}") {
        let encoded = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC).to_string();
        let path = format!("/objects/Counter/name/{encoded}/{rest}");
        match parse_route(&Method::GET, &path, None, SLOTS, known) {
            Ok(Target::Object { object, rest: r }) => {
                let class = ClassName::new("Counter").unwrap();
                let parsed = ObjectName::new(&name).unwrap();
                prop_assert_eq!(object.id, ObjectId::named(&class, &parsed));
                prop_assert_eq!(object.name.as_ref().map(|n| n.as_str()), Some(name.as_str()));
                prop_assert_eq!(r, format!("/{rest}"));
            }
            other => prop_assert!(ObjectName::new(&name).is_err(), "{other:?}"),
        }
    }

    #[test]
    fn call_chains_from_peers_parse_only_when_well_formed(header in any::<String>()) {
        if let Some(chain) = CallChain::parse(&header) {
            prop_assert!(chain.len() <= stead_sidecar::chain::MAX_DEPTH);
            prop_assert_eq!(CallChain::parse(&chain.to_header()), Some(chain));
        }
    }

    #[test]
    fn a_chain_round_trips_through_its_header(names in prop::collection::vec("[a-z]{1,8}", 0..16)) {
        let class = ClassName::new("Counter").unwrap();
        let mut chain = CallChain::default();
        for n in &names {
            chain = chain.with((class.clone(), ObjectId::named(&class, &ObjectName::new(n).unwrap())));
        }
        prop_assert_eq!(CallChain::parse(&chain.to_header()), Some(chain.clone()));
        prop_assert_eq!(chain.caller().is_some(), !names.is_empty());
    }

    #[test]
    fn ids_and_class_names_never_panic(s in any::<String>()) {
        if let Ok(id) = ObjectId::parse(&s) {
            prop_assert_eq!(id.to_hex(), s.clone());
        }
        if let Ok(c) = ClassName::new(&s) {
            prop_assert_eq!(c.as_str(), s.as_str());
        }
        if let Ok(n) = ObjectName::new(&s) {
            prop_assert!(!n.as_str().is_empty() && n.as_str().len() <= 512);
        }
    }
}
