//! The image manager against a real registry (Debian's `docker-registry`),
//! with busybox images built by umoci and pushed by skopeo.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::Path;

use orca_kubelet::image::{
    Images, PullError, PullPolicy, RegistryConfig, credentials_from_docker_config,
};
use orca_testkit::registry::{
    FIRST_LAYER_FILE, ImageSpec, PASSWORD, Registry, SECOND_LAYER_FILE, USERNAME,
};

/// An image store in a temporary dir, pulling from `registry` over plain HTTP.
fn images_for(registry: &Registry, root: &Path) -> Images {
    let registries = BTreeMap::from([(
        registry.addr(),
        RegistryConfig {
            mirrors: vec![],
            insecure: true,
        },
    )]);
    Images::new(root.to_path_buf(), registries, vec![]).expect("opening the image store")
}

fn store() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("orca-images-")
        .tempdir()
        .expect("creating a temporary image store")
}

fn is_whiteout(path: &Path) -> bool {
    fs::symlink_metadata(path)
        .is_ok_and(|meta| meta.file_type().is_char_device() && meta.rdev() == 0)
}

#[tokio::test]
async fn pulls_once_then_needs_no_registry() {
    let registry = Registry::start();
    let spec = ImageSpec {
        entrypoint: vec!["/bin/sh".into()],
        cmd: vec!["-c".into(), "echo hi".into()],
        env: vec!["GREETING=hello".into()],
        working_dir: Some("/tmp".into()),
        ..ImageSpec::default()
    };
    let reference = registry.push_busybox("bb:1", &spec);
    let root = store();
    let images = images_for(&registry, root.path());

    let image = images
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .expect("pulls");
    assert_eq!(image.reference, reference);
    assert!(image.id.starts_with("sha256:"), "{}", image.id);
    assert!(
        image
            .repo_digest
            .starts_with(&format!("{}/bb@sha256:", registry.addr())),
        "{}",
        image.repo_digest
    );
    assert_eq!(image.layers.len(), 1);
    let rootfs = &image.layers[0];
    assert!(rootfs.join("bin/busybox").is_file());
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).expect("sh is a link"),
        Path::new("busybox")
    );
    assert_eq!(
        fs::metadata(rootfs.join("bin/busybox"))
            .expect("busybox")
            .mode()
            & 0o111,
        0o111
    );
    assert_eq!(image.config.entrypoint, ["/bin/sh"]);
    assert_eq!(image.config.cmd, ["-c", "echo hi"]);
    assert!(image.config.env.contains(&"GREETING=hello".to_string()));
    assert_eq!(image.config.working_dir, "/tmp");
    assert_eq!(images.blobs_pulled(), 2, "a config and a layer");

    let addr = registry.addr();
    drop(registry);
    let again = images
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .expect("present without the registry");
    assert_eq!(again.id, image.id);
    assert_eq!(again.layers, image.layers);
    images
        .ensure(&reference, PullPolicy::Never, &[])
        .await
        .expect("present, so Never is fine");
    assert_eq!(images.blobs_pulled(), 2);

    let err = images
        .ensure(&reference, PullPolicy::Always, &[])
        .await
        .expect_err("Always asks the registry, which is gone");
    let message = err.to_string();
    assert!(matches!(err, PullError::Pull(_)), "{message}");
    assert!(message.contains(&reference), "{message}");
    assert!(
        message.contains(&format!("cannot connect to http://{addr}")),
        "{message}"
    );
}

#[tokio::test]
async fn always_re_resolves_without_downloading_again() {
    let registry = Registry::start();
    let reference = registry.push_busybox("bb:latest", &ImageSpec::default());
    let root = store();
    let images = images_for(&registry, root.path());
    let policy = PullPolicy::of(None, &reference);
    assert_eq!(policy, PullPolicy::Always);
    let first = images.ensure(&reference, policy, &[]).await.expect("pulls");
    let second = images
        .ensure(&reference, policy, &[])
        .await
        .expect("resolves");
    assert_eq!(first.repo_digest, second.repo_digest);
    assert_eq!(images.blobs_pulled(), 2);
}

#[tokio::test]
async fn whiteouts_become_overlay_whiteouts() {
    let registry = Registry::start();
    let spec = ImageSpec {
        whiteout_layer: true,
        ..ImageSpec::default()
    };
    let reference = registry.push_busybox("layered:1", &spec);
    let root = store();
    let images = images_for(&registry, root.path());
    let image = images
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .expect("pulls");
    assert_eq!(image.layers.len(), 2);
    assert!(image.layers[0].join(FIRST_LAYER_FILE).is_file());
    assert!(image.layers[1].join(SECOND_LAYER_FILE).is_file());
    assert!(
        is_whiteout(&image.layers[1].join(FIRST_LAYER_FILE)),
        "the deleted file is a 0/0 character device in the upper layer"
    );
    let name = Path::new(FIRST_LAYER_FILE)
        .file_name()
        .and_then(|n| n.to_str())
        .expect("a file name");
    assert!(
        !image.layers[1]
            .join("etc")
            .join(format!(".wh.{name}"))
            .exists()
    );
}

#[tokio::test]
async fn missing_tag_reports_the_registry_error() {
    let registry = Registry::start();
    registry.push_busybox("bb:1", &ImageSpec::default());
    let root = store();
    let images = images_for(&registry, root.path());
    let image = format!("{}/bb:nope", registry.addr());
    let err = images
        .ensure(&image, PullPolicy::IfNotPresent, &[])
        .await
        .expect_err("no such tag");
    let message = err.to_string();
    assert_eq!(err.reason(), "ErrImagePull");
    assert!(message.contains("manifest unknown"), "{message}");
    assert!(message.contains(&image), "{message}");
    assert!(
        message.contains(&format!("http://{}", registry.addr())),
        "{message}"
    );
    assert!(!message.contains("Registry {"), "no debug print: {message}");
    assert_eq!(images.blobs_pulled(), 0);
}

#[tokio::test]
async fn images_outside_the_allow_list_are_refused_before_any_request() {
    // Nothing listens on this port: a request would fail differently.
    let image = format!("127.0.0.1:{}/bb:1", orca_testkit::closed_port());
    let root = store();
    let images = Images::new(
        root.path().to_path_buf(),
        BTreeMap::new(),
        vec!["docker.io/library/*".into(), "quay.io/orca/app:1".into()],
    )
    .expect("opening the image store");
    let err = images
        .ensure(&image, PullPolicy::Always, &[])
        .await
        .expect_err("refused");
    let message = err.to_string();
    assert!(matches!(err, PullError::Refused(_)), "{message}");
    assert!(message.contains(&image), "{message}");
    assert!(
        message.contains("docker.io/library/*, quay.io/orca/app:1"),
        "{message}"
    );
    assert_eq!(images.blobs_pulled(), 0);
}

#[tokio::test]
async fn never_policy_without_the_image() {
    let image = format!("127.0.0.1:{}/bb:1", orca_testkit::closed_port());
    let root = store();
    let images = Images::new(root.path().to_path_buf(), BTreeMap::new(), vec![])
        .expect("opening the image store");
    let err = images
        .ensure(&image, PullPolicy::Never, &[])
        .await
        .expect_err("absent");
    assert!(matches!(err, PullError::NeverPull(_)), "{err}");
    assert_eq!(err.reason(), "ErrImageNeverPull");
    assert_eq!(
        err.to_string(),
        format!("Container image \"{image}\" is not present with pull policy of Never")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_ensures_share_one_download() {
    let registry = Registry::start();
    let reference = registry.push_busybox("bb:1", &ImageSpec::default());
    let root = store();
    let images = images_for(&registry, root.path());
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let images = images.clone();
            let reference = reference.clone();
            tokio::spawn(async move {
                images
                    .ensure(&reference, PullPolicy::IfNotPresent, &[])
                    .await
            })
        })
        .collect();
    let mut ids = HashSet::new();
    for task in tasks {
        ids.insert(task.await.expect("joins").expect("pulls").id);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(images.blobs_pulled(), 2, "one config and one layer, once");
    assert_eq!(
        fs::read_dir(root.path().join("layers"))
            .expect("layers")
            .count(),
        1
    );
}

#[tokio::test]
async fn docker_hub_images_come_from_a_mirror() {
    let registry = Registry::start();
    let spec = ImageSpec {
        docker_schema2: true,
        ..ImageSpec::default()
    };
    registry.push_busybox("library/bb:1", &spec);
    assert!(
        registry
            .manifest("library/bb:1")
            .contains("application/vnd.docker.distribution.manifest.v2+json"),
        "pushed as a Docker schema 2 manifest"
    );
    let root = store();
    let registries = BTreeMap::from([(
        "docker.io".to_string(),
        RegistryConfig {
            mirrors: vec![format!("http://{}", registry.addr())],
            insecure: false,
        },
    )]);
    let images = Images::new(
        root.path().to_path_buf(),
        registries,
        vec!["docker.io/library/*".into()],
    )
    .expect("opening the image store");
    let image = images
        .ensure("bb:1", PullPolicy::IfNotPresent, &[])
        .await
        .expect("pulled from the mirror");
    assert_eq!(image.reference, "docker.io/library/bb:1");
    assert!(
        image
            .repo_digest
            .starts_with("docker.io/library/bb@sha256:"),
        "{}",
        image.repo_digest
    );
    assert!(image.layers[0].join("bin/busybox").is_file());
}

#[tokio::test]
async fn zstd_layers_are_unpacked() {
    let registry = Registry::start();
    let spec = ImageSpec {
        whiteout_layer: true,
        zstd: true,
        ..ImageSpec::default()
    };
    let reference = registry.push_busybox("zstd:1", &spec);
    let manifest = registry.manifest("zstd:1");
    assert!(
        manifest.contains("application/vnd.oci.image.layer.v1.tar+zstd"),
        "{manifest}"
    );
    let root = store();
    let images = images_for(&registry, root.path());
    let image = images
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .expect("pulls");
    assert!(image.layers[0].join("bin/busybox").is_file());
    assert!(image.layers[1].join(SECOND_LAYER_FILE).is_file());
    assert!(is_whiteout(&image.layers[1].join(FIRST_LAYER_FILE)));
}

#[tokio::test]
async fn garbage_collection_keeps_images_in_use_and_shared_layers() {
    let registry = Registry::start();
    let kept = registry.push_busybox("kept:1", &ImageSpec::default());
    let spec = ImageSpec {
        whiteout_layer: true,
        ..ImageSpec::default()
    };
    let unused = registry.push_busybox("unused:1", &spec);
    let root = store();
    let images = images_for(&registry, root.path());
    let kept_image = images
        .ensure(&kept, PullPolicy::IfNotPresent, &[])
        .await
        .expect("pulls");
    let unused_image = images
        .ensure(&unused, PullPolicy::IfNotPresent, &[])
        .await
        .expect("pulls");
    assert_eq!(kept_image.layers[0], unused_image.layers[0], "shared base");

    let in_use = HashSet::from([kept.clone()]);
    // A disk far below 100% full is left alone.
    assert_eq!(images.collect_garbage(&in_use, 100, 100).expect("gc"), 0);
    // 0% makes every disk too full: everything unused goes.
    let freed = images.collect_garbage(&in_use, 0, 0).expect("gc");
    assert!(freed > 0);
    assert!(kept_image.layers[0].join("bin/busybox").is_file());
    assert!(!unused_image.layers[1].exists());
    images
        .ensure(&kept, PullPolicy::Never, &[])
        .await
        .expect("kept");
    let err = images
        .ensure(&unused, PullPolicy::Never, &[])
        .await
        .expect_err("collected");
    assert!(matches!(err, PullError::NeverPull(_)), "{err}");
}

#[tokio::test]
async fn pull_secrets_answer_a_password_challenge() {
    let registry = Registry::start_with_password();
    let reference = registry.push_busybox("private:1", &ImageSpec::default());
    let root = store();
    let images = images_for(&registry, root.path());
    let err = images
        .ensure(&reference, PullPolicy::IfNotPresent, &[])
        .await
        .expect_err("no credentials");
    assert!(err.to_string().contains("authentication required"), "{err}");

    let auth = format!("{USERNAME}:{PASSWORD}");
    let docker_config = format!(
        r#"{{"auths": {{"{}": {{"username": "{USERNAME}", "password": "{PASSWORD}"}}}}}}"#,
        registry.addr()
    );
    let credentials =
        credentials_from_docker_config(docker_config.as_bytes()).expect("a docker config");
    let image = images
        .ensure(&reference, PullPolicy::IfNotPresent, &credentials)
        .await
        .expect("pulls with the pull secret");
    assert!(image.layers[0].join("bin/busybox").is_file());
    assert!(
        !err.to_string().contains(&auth),
        "no credentials in messages"
    );
}
