//! The validation rules of each kind.

use super::{FieldError, Validate};
use crate::api::*;

macro_rules! metadata_only {
    ($($kind:ty),*) => {$(
        impl Validate for $kind {
            fn validate(&self) -> Vec<FieldError> {
                let mut errors = Vec::new();
                if self.metadata.name.as_deref().unwrap_or_default().is_empty() {
                    errors.push(FieldError::required("metadata.name"));
                }
                errors
            }
        }
    )*};
}

metadata_only!(Pod, Service, EndpointSlice, Node, Namespace, Secret, ConfigMap, Deployment, ReplicaSet, Ingress, Lease);
