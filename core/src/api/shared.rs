//! Values many cached objects hold alike, kept once. Every pod of one
//! ReplicaSet carries the same labels, owner references and template; in a
//! cache of 50,000 pods their copies were most of a master's memory.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One value shared by every cached object that holds it alike.
pub struct Shared<T>(Arc<T>);

impl<T: Pooled> Shared<T> {
    /// The pool's copy of `value`, made the pool's if it has none.
    pub fn new(value: T) -> Self {
        Self(T::pool().intern(value))
    }
}

impl<T> Deref for Shared<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<T: fmt::Debug> fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

impl<T: Pooled + Default> Default for Shared<T> {
    fn default() -> Self {
        Self::new(T::default())
    }
}

impl<'a, T> IntoIterator for &'a Shared<T>
where
    &'a T: IntoIterator,
{
    type Item = <&'a T as IntoIterator>::Item;
    type IntoIter = <&'a T as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        (&*self.0).into_iter()
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de, T: Pooled + Deserialize<'de>> Deserialize<'de> for Shared<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(d).map(Self::new)
    }
}

/// A type whose values are shared through one pool per process.
pub trait Pooled: Serialize + Sized + Send + Sync + 'static {
    /// The pool its values are kept in.
    fn pool() -> &'static Pool<Self>;
}

/// The values of one type in use, by their JSON form (the k8s-openapi
/// types compare but do not hash). A value is kept while something holds
/// it; the pool only remembers where to find it.
pub struct Pool<T> {
    state: Mutex<PoolState<T>>,
}

struct PoolState<T> {
    by_json: HashMap<String, Weak<T>>,
    /// Entries after the last sweep of the gone ones.
    swept_at: usize,
}

/// Entries a pool holds before its first sweep.
const FIRST_SWEEP: usize = 1024;

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(PoolState {
                by_json: HashMap::new(),
                swept_at: 0,
            }),
        }
    }
}

impl<T: Serialize> Pool<T> {
    fn intern(&self, value: T) -> Arc<T> {
        let json = serde_json::to_string(&value).expect("cached values serialise");
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(kept) = state.by_json.get(&json).and_then(Weak::upgrade) {
            return kept;
        }
        let value = Arc::new(value);
        state.by_json.insert(json, Arc::downgrade(&value));
        // Swept when it has doubled since the last sweep, so a sweep's
        // cost is spread over as many inserts as it looks at.
        if state.by_json.len() > (2 * state.swept_at).max(FIRST_SWEEP) {
            state.by_json.retain(|_, kept| kept.strong_count() > 0);
            state.swept_at = state.by_json.len();
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::LazyLock;

    use super::*;

    #[derive(Serialize, Deserialize, PartialEq, Debug, Default)]
    struct Labels(BTreeMap<String, String>);

    static LABELS: LazyLock<Pool<Labels>> = LazyLock::new(Pool::default);

    impl Pooled for Labels {
        fn pool() -> &'static Pool<Self> {
            &LABELS
        }
    }

    fn decode(json: &str) -> Shared<Labels> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn equal_values_are_kept_once_and_gone_ones_swept() {
        let a = decode(r#"{"app": "web", "tier": "front"}"#);
        let b = decode(r#"{"tier": "front", "app": "web"}"#);
        assert!(Arc::ptr_eq(&a.0, &b.0), "one copy of equal labels");
        let c = decode(r#"{"app": "db"}"#);
        assert!(!Arc::ptr_eq(&a.0, &c.0));
        assert_eq!(c.0.0["app"], "db");
        assert_eq!(serde_json::to_string(&c).unwrap(), r#"{"app":"db"}"#);
        // Values nothing holds any more are swept as the pool grows.
        drop((a, b, c));
        for i in 0..3 * FIRST_SWEEP {
            drop(decode(&format!(r#"{{"n": "{i}"}}"#)));
        }
        let remembered = LABELS.state.lock().unwrap().by_json.len();
        assert!(remembered <= 2 * FIRST_SWEEP, "{remembered} remembered");
    }
}
