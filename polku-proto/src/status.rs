//! One rule for what a failed gRPC call's status means to its caller: try a
//! smaller request, give up, or try again later. The emitters (to another
//! gateway, to a plugin) and the ingestor plugin client all read a status
//! through [`classify`].
//!
//! ```
//! use polku_proto::status::{Failure, classify};
//! use tonic::Status;
//!
//! assert_eq!(classify(&Status::unavailable("down")), Failure::Transient);
//! assert_eq!(classify(&Status::invalid_argument("bad")), Failure::BadRequest);
//! assert_eq!(classify(&Status::out_of_range("message too large")), Failure::TooLarge);
//! ```

use tonic::{Code, Status};

/// What a failed call's status says about sending the request again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Too large for the far side: smaller requests may pass. tonic says
    /// `OUT_OF_RANGE`; the Python and Go gRPC libraries say
    /// `RESOURCE_EXHAUSTED` "... larger than max ...".
    TooLarge,
    /// The far side refuses what the request holds (`INVALID_ARGUMENT`,
    /// `FAILED_PRECONDITION`): the same request will never pass.
    BadRequest,
    /// The far side refuses the caller or the call itself
    /// (`UNAUTHENTICATED`, `PERMISSION_DENIED`, `UNIMPLEMENTED`, `NOT_FOUND`,
    /// `ALREADY_EXISTS`): final until someone changes a configuration.
    Refused,
    /// Anything else (`UNAVAILABLE`, `DEADLINE_EXCEEDED`, a full buffer's
    /// `RESOURCE_EXHAUSTED`, `INTERNAL`, `UNKNOWN`, ...): may pass later.
    Transient,
}

impl Failure {
    /// Whether sending the same request again can never help.
    pub fn is_final(self) -> bool {
        matches!(self, Failure::BadRequest | Failure::Refused)
    }
}

/// What `status` means to the caller that got it.
pub fn classify(status: &Status) -> Failure {
    match status.code() {
        Code::OutOfRange => Failure::TooLarge,
        Code::ResourceExhausted if status.message().contains("larger than max") => {
            Failure::TooLarge
        }
        Code::InvalidArgument | Code::FailedPrecondition => Failure::BadRequest,
        Code::Unauthenticated
        | Code::PermissionDenied
        | Code::Unimplemented
        | Code::NotFound
        | Code::AlreadyExists => Failure::Refused,
        _ => Failure::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_one_meaning() {
        use Failure::*;
        let cases = [
            (Code::Ok, Transient),
            (Code::Cancelled, Transient),
            (Code::Unknown, Transient),
            (Code::InvalidArgument, BadRequest),
            (Code::DeadlineExceeded, Transient),
            (Code::NotFound, Refused),
            (Code::AlreadyExists, Refused),
            (Code::PermissionDenied, Refused),
            (Code::ResourceExhausted, Transient),
            (Code::FailedPrecondition, BadRequest),
            (Code::Aborted, Transient),
            (Code::OutOfRange, TooLarge),
            (Code::Unimplemented, Refused),
            (Code::Internal, Transient),
            (Code::Unavailable, Transient),
            (Code::DataLoss, Transient),
            (Code::Unauthenticated, Refused),
        ];
        for (code, want) in cases {
            assert_eq!(classify(&Status::new(code, "x")), want, "{code:?}");
        }
    }

    #[test]
    fn a_size_refusal_from_python_or_go_is_too_large_not_a_full_buffer() {
        let py =
            Status::resource_exhausted("Received message larger than max (5000000 vs. 4194304)");
        assert_eq!(classify(&py), Failure::TooLarge);
        let full = Status::resource_exhausted("the buffer is full");
        assert_eq!(classify(&full), Failure::Transient);
        assert!(!Failure::TooLarge.is_final() && !Failure::Transient.is_final());
        assert!(Failure::BadRequest.is_final() && Failure::Refused.is_final());
    }
}
