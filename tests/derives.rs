//! The prelude's `Serialize`, `Deserialize`, `Pod` and `Zeroable` derives are serde's and
//! bytemuck's own, run through ensemble: a type derived with them encodes exactly as with
//! serde's derive (attributes included), and a `Pod` type is a shared array's element.

use ensemble::prelude::*;
use std::borrow::Cow;
use std::fmt::Debug;
use std::marker::PhantomData;

/// The same types twice: once with serde's derives, once with the prelude's.
macro_rules! types {
    ($ser:path, $de:path) => {
        #[derive(Debug, PartialEq, $ser, $de)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct Renamed {
            pub field_one: u32,
            #[serde(skip)]
            pub skipped: u8,
            #[serde(default)]
            pub defaulted: String,
        }

        #[derive(Debug, PartialEq, $ser, $de)]
        pub struct Tuple(pub u8, pub String);

        #[derive(Debug, PartialEq, $ser, $de)]
        pub struct Unit;

        #[derive(Debug, PartialEq, $ser, $de)]
        #[serde(tag = "kind")]
        pub enum Tagged {
            A {
                x: i32,
            },
            #[serde(rename = "see")]
            C,
        }

        #[derive(Debug, PartialEq, $ser, $de)]
        #[serde(untagged)]
        pub enum Untagged {
            Int(i64),
            Text(String),
        }

        #[derive(Debug, PartialEq, $ser, $de)]
        pub struct Generic<T, U> {
            pub t: T,
            pub list: Vec<U>,
            pub marker: PhantomData<fn() -> u8>,
        }

        #[derive(Debug, PartialEq, $ser, $de)]
        pub struct Tree {
            pub value: u8,
            pub children: Vec<Self>,
        }

        #[derive(Debug, PartialEq, $ser, $de)]
        #[serde(transparent)]
        pub struct Meters(pub f64);

        #[derive(Debug, PartialEq, $ser, $de)]
        pub struct Flat {
            pub id: u8,
            #[serde(flatten)]
            pub inner: Tuple2,
        }

        #[derive(Debug, PartialEq, $ser, $de)]
        pub struct Tuple2 {
            pub y: i32,
        }

        #[derive(Debug, PartialEq, $ser, $de)]
        pub struct Helpers {
            #[serde(with = "crate::as_string")]
            pub n: u32,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub maybe: Option<u8>,
        }

        #[derive(Debug, PartialEq, $ser, $de)]
        #[serde(default)]
        pub struct Defaults {
            pub a: u8,
            pub b: String,
        }

        impl Default for Defaults {
            fn default() -> Self {
                Defaults { a: 7, b: "seven".into() }
            }
        }
    };
}

mod with_serde {
    use super::*;
    types!(serde::Serialize, serde::Deserialize);
}

mod with_prelude {
    use super::*;
    types!(Serialize, Deserialize);
}

/// `#[serde(with = ..)]` helpers, named through `ensemble::serde`.
mod as_string {
    use ensemble::serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&n.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Encodes `reference` (serde's derive) and `ours` (the prelude's) and decodes the encoding back.
fn check<R, O>(reference: R, ours: O)
where
    R: serde::Serialize,
    O: serde::Serialize + serde::de::DeserializeOwned + Debug + PartialEq,
{
    let expected = serde_json::to_string(&reference).unwrap();
    assert_eq!(serde_json::to_string(&ours).unwrap(), expected);
    let back: O = serde_json::from_str(&expected).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), expected, "{ours:?}");
}

#[test]
fn structs_tuples_and_units_encode_as_with_serde() {
    use {with_prelude as p, with_serde as s};
    check(
        s::Renamed { field_one: 1, skipped: 0, defaulted: "d".into() },
        p::Renamed { field_one: 1, skipped: 0, defaulted: "d".into() },
    );
    check(s::Tuple(1, "a".into()), p::Tuple(1, "a".into()));
    check(s::Unit, p::Unit);
    check(s::Meters(1.5), p::Meters(1.5));
    check(s::Flat { id: 1, inner: s::Tuple2 { y: 2 } }, p::Flat { id: 1, inner: p::Tuple2 { y: 2 } });
}

#[test]
fn enums_encode_as_with_serde() {
    use {with_prelude as p, with_serde as s};
    check(s::Tagged::A { x: 3 }, p::Tagged::A { x: 3 });
    check(s::Tagged::C, p::Tagged::C);
    check(s::Untagged::Text("t".into()), p::Untagged::Text("t".into()));
    check(s::Untagged::Int(-4), p::Untagged::Int(-4));
}

#[test]
fn generic_and_recursive_types_encode_as_with_serde() {
    use {with_prelude as p, with_serde as s};
    let marker = PhantomData;
    check(
        s::Generic { t: 1u8, list: vec!["x"], marker },
        p::Generic { t: 1u8, list: vec!["x".to_owned()], marker },
    );
    check(
        s::Tree { value: 1, children: vec![s::Tree { value: 2, children: vec![] }] },
        p::Tree { value: 1, children: vec![p::Tree { value: 2, children: vec![] }] },
    );
}

#[test]
fn field_and_container_attributes_mean_what_they_mean_to_serde() {
    use {with_prelude as p, with_serde as s};
    check(s::Helpers { n: 5, maybe: None }, p::Helpers { n: 5, maybe: None });
    check(s::Defaults::default(), p::Defaults::default());
    let defaults: p::Defaults = serde_json::from_str(r#"{"a":1}"#).unwrap();
    assert_eq!(defaults, p::Defaults { a: 1, b: "seven".into() });
    assert!(
        serde_json::from_str::<p::Renamed>(r#"{"fieldOne":1,"other":2}"#).is_err(),
        "deny_unknown_fields"
    );
}

#[test]
fn bounds_follow_serde_phantom_data_skipped_fields_and_bound_attributes() {
    /// Neither serializable nor defaultable.
    #[derive(Debug, PartialEq)]
    struct Opaque;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Marked<T> {
        id: u8,
        marker: PhantomData<T>,
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(bound = "")]
    struct Skipping<T> {
        #[serde(skip)]
        cache: Option<T>,
    }

    let marked: Marked<Opaque> = serde_json::from_str(r#"{"id":3,"marker":null}"#).unwrap();
    assert_eq!(serde_json::to_string(&marked).unwrap(), r#"{"id":3,"marker":null}"#);
    let skipping: Skipping<Opaque> = serde_json::from_str("{}").unwrap();
    assert_eq!(serde_json::to_string(&skipping).unwrap(), "{}");
}

#[test]
fn borrowed_fields_borrow_from_the_input() {
    #[derive(Serialize, Deserialize)]
    struct Borrowed<'a> {
        name: &'a str,
        #[serde(borrow)]
        text: Cow<'a, str>,
    }

    let input = String::from(r#"{"name":"n","text":"abc"}"#);
    let borrowed: Borrowed = serde_json::from_str(&input).unwrap();
    assert_eq!(borrowed.name, "n");
    assert!(matches!(borrowed.text, Cow::Borrowed("abc")));
}

#[test]
fn a_pod_type_of_ones_own_is_a_shared_arrays_element() {
    #[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
    #[repr(C)]
    struct Pixel {
        rgba: [u8; 4],
        depth: f32,
    }

    #[derive(Clone, Copy, Zeroable)]
    #[repr(u8)]
    #[allow(dead_code)] // only its zero value is built
    enum Level {
        Low = 0,
        High = 1,
    }

    let mut pixels = SharedSliceMut::<Pixel>::new(3).unwrap();
    assert!(pixels.iter().all(|p| *p == Pixel::zeroed()), "fresh memory is zeroed");
    pixels[1] = Pixel { rgba: [1, 2, 3, 4], depth: 0.5 };
    let bytes: &[u8] = ensemble::bytemuck::cast_slice(&pixels[..]);
    assert_eq!(bytes.len(), 3 * std::mem::size_of::<Pixel>());
    assert_eq!(&bytes[8..12], &[1, 2, 3, 4]);
    assert!(matches!(Level::zeroed(), Level::Low));
}
