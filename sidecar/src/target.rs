//! What a client path asks for: an object route (class, name or id, the rest of the path), a new
//! id, or the app's stateless front door.

use http::{Method, StatusCode};
use stead_core::{ClassName, ObjectId, ObjectName};

use crate::error::ApiError;
use crate::object::ObjectRef;

/// What a client path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Target {
    /// `/objects/{class}/name|id/{…}/{rest…}`: `rest` is the path (and query) the app sees.
    Object { object: ObjectRef, rest: String },
    /// `POST /objects/{class}/new-id`
    NewId { class: ClassName },
    /// Anything outside `/objects/`.
    Stateless,
}

/// Parses a request target. `known` decides whether a class exists.
pub fn parse_route(
    method: &Method,
    path: &str,
    query: Option<&str>,
    slots: u32,
    known: impl Fn(&str) -> bool,
) -> Result<Target, ApiError> {
    let Some(tail) = path.strip_prefix("/objects/") else {
        return Ok(Target::Stateless);
    };
    let mut parts = tail.splitn(4, '/');
    let class_raw = decode(parts.next().unwrap_or(""))?;
    let class = ClassName::new(&class_raw)
        .map_err(|e| ApiError::bad_request("invalid_class", e.to_string()))?;
    if !known(class.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_class",
            format!("this namespace has no class {class}"),
        ));
    }
    let how = parts.next().unwrap_or("");
    if how == "new-id" && parts.next().is_none() {
        if method != Method::POST {
            return Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "new-id takes POST",
            ));
        }
        return Ok(Target::NewId { class });
    }
    let key = decode(parts.next().unwrap_or(""))?;
    let rest_path = parts.next().unwrap_or("");
    let (id, name) = match how {
        "name" => {
            let name = ObjectName::new(&key)
                .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
            (ObjectId::named(&class, &name), Some(name))
        }
        "id" => (
            ObjectId::parse(&key)
                .map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))?,
            None,
        ),
        _ => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "object routes are /objects/{class}/name/{name}/…, /objects/{class}/id/{id}/… and POST /objects/{class}/new-id",
            ));
        }
    };
    let mut rest = format!("/{rest_path}");
    if let Some(q) = query {
        rest.push('?');
        rest.push_str(q);
    }
    Ok(Target::Object {
        object: ObjectRef::new(class, id, name, slots),
        rest,
    })
}

fn decode(segment: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("invalid_path", "path segment is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str) -> Result<Target, ApiError> {
        parse_route(&method, path, Some("x=1"), 4096, |c| c == "Counter")
    }

    #[test]
    fn named_route_strips_the_prefix_and_keeps_the_query() {
        match parse(Method::POST, "/objects/Counter/name/a%2Fb/increment").unwrap() {
            Target::Object { object, rest } => {
                assert_eq!(object.name.unwrap().as_str(), "a/b");
                assert_eq!(rest, "/increment?x=1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn id_route_parses_the_hex_id() {
        let id = ObjectId::unique().unwrap();
        match parse(Method::GET, &format!("/objects/Counter/id/{id}")).unwrap() {
            Target::Object { object, rest } => {
                assert_eq!(object.id, id);
                assert!(object.name.is_none());
                assert_eq!(rest, "/?x=1");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_routes_get_the_right_status() {
        let status = |m, p| parse(m, p).unwrap_err().status;
        assert_eq!(
            status(Method::GET, "/objects/Nope/name/a/x"),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status(Method::GET, "/objects/Counter/id/xyz/x"),
            StatusCode::BAD_REQUEST
        );
        let long = format!("/objects/Counter/name/{}/x", "a".repeat(513));
        assert_eq!(status(Method::GET, &long), StatusCode::BAD_REQUEST);
        assert_eq!(
            status(Method::GET, "/objects/Counter/name//x"),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status(Method::GET, "/objects/Counter/new-id"),
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            status(Method::GET, "/objects/Counter/what/a"),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn outside_objects_is_stateless() {
        assert_eq!(parse(Method::GET, "/").unwrap(), Target::Stateless);
        assert!(matches!(
            parse(Method::POST, "/objects/Counter/new-id").unwrap(),
            Target::NewId { .. }
        ));
    }
}
