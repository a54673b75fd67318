//! Capability checks: the token must verify, be unexpired, and be for this transfer (and
//! direction).

use http::{Request, StatusCode};
use hyper::body::Incoming;
use msim_shared::token::{Capability, Direction, TokenError};

use super::responses::Refuse;
use super::State;
use crate::metrics::Refusal;
use crate::request;

/// Verify the token and that it is for this transfer (and direction, when given).
pub(super) fn authorize(
    state: &State,
    req: &Request<Incoming>,
    id: &str,
    dir: Option<Direction>,
) -> Result<Capability, Refuse> {
    let token = request::token(req.headers(), req.uri().query()).ok_or_else(|| {
        Refuse::new(
            StatusCode::UNAUTHORIZED,
            Refusal::MissingToken,
            "missing token: send Authorization: Bearer <token> or ?token=<token>",
        )
    })?;
    let now = state.config.clock.now();
    let cap = state
        .config
        .keyring
        .verify(token, now)
        .map_err(|e| match e {
            TokenError::Expired => Refuse::new(
                StatusCode::UNAUTHORIZED,
                Refusal::ExpiredToken,
                "token expired",
            ),
            e => Refuse::new(
                StatusCode::UNAUTHORIZED,
                Refusal::BadToken,
                format!("invalid token: {e}"),
            ),
        })?;
    if cap.transfer_id != id {
        return Err(Refuse::new(
            StatusCode::FORBIDDEN,
            Refusal::Forbidden,
            "token is for another transfer",
        ));
    }
    if let Some(d) = dir {
        if cap.direction != d {
            return Err(Refuse::new(
                StatusCode::FORBIDDEN,
                Refusal::Forbidden,
                format!("a {} token cannot be used to {d}", cap.direction),
            ));
        }
    }
    Ok(cap)
}
