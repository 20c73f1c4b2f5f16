use serde_json::{Value, json};

use super::*;

enum Input {
    Edited(&'static str, fn(&mut Value)),
    Raw(&'static str),
}

struct BrokenCase {
    name: &'static str,
    input: Input,
    path: &'static str,
    message_fragment: &'static str,
}

fn broken_cases() -> Vec<BrokenCase> {
    use Input::{Edited, Raw};
    vec![
        BrokenCase {
            name: "absolute containerPath",
            input: Edited(POSTGRES_APP, |doc| {
                set(doc, POSTGRES_VOLUME, "containerPath", json!("/data"))
            }),
            path: "container.volumes[0].containerPath",
            message_fragment: "must be a single relative path segment like \"data\", got \"/data\"",
        },
        BrokenCase {
            name: "nested containerPath",
            input: Edited(POSTGRES_APP, |doc| {
                set(doc, POSTGRES_VOLUME, "containerPath", json!("var/data"))
            }),
            path: "container.volumes[0].containerPath",
            message_fragment: "got \"var/data\"",
        },
        BrokenCase {
            name: "climbing containerPath",
            input: Edited(POSTGRES_APP, |doc| {
                set(doc, POSTGRES_VOLUME, "containerPath", json!("../x"))
            }),
            path: "container.volumes[0].containerPath",
            message_fragment: "single relative path segment",
        },
        BrokenCase {
            name: "containerPath ..",
            input: Edited(POSTGRES_APP, |doc| {
                set(doc, POSTGRES_VOLUME, "containerPath", json!(".."))
            }),
            path: "container.volumes[0].containerPath",
            message_fragment: "single relative path segment",
        },
        BrokenCase {
            name: "containerPath .",
            input: Edited(POSTGRES_APP, |doc| {
                set(doc, POSTGRES_VOLUME, "containerPath", json!("."))
            }),
            path: "container.volumes[0].containerPath",
            message_fragment: "single relative path segment",
        },
        BrokenCase {
            name: "empty containerPath",
            input: Edited(POSTGRES_APP, |doc| {
                set(doc, POSTGRES_VOLUME, "containerPath", json!(""))
            }),
            path: "container.volumes[0].containerPath",
            message_fragment: "must not be empty",
        },
        BrokenCase {
            name: "label for a volume the app does not have",
            input: Edited(MYSQL_APP, |doc| {
                set(
                    doc,
                    "",
                    "labels",
                    json!({"berth/pgdata/selector": "media=ssd"}),
                )
            }),
            path: "labels.berth/pgdata/selector",
            message_fragment: "\"pgdata\" is not a persistent volume of this definition",
        },
        BrokenCase {
            name: "label without a key",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, "", "labels", json!({"berth/mysqldata": "x"}))
            }),
            path: "labels.berth/mysqldata",
            message_fragment: "a berth label is berth/VOLUME/KEY",
        },
        BrokenCase {
            name: "label setting a persistent field",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, "", "labels", json!({"berth/mysqldata/size": "1GiB"}))
            }),
            path: "labels.berth/mysqldata/size",
            message_fragment: "unknown key; berth accepts pool, uid, gid, mode, reclaim, fs, selector and label.<key>",
        },
        BrokenCase {
            name: "label that is not a string",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, "", "labels", json!({"berth/mysqldata/uid": 999}))
            }),
            path: "labels.berth/mysqldata/uid",
            message_fragment: "must be a string, got 999",
        },
        BrokenCase {
            name: "read-only persistent volume",
            input: Edited(MYSQL_APP, |doc| set(doc, MYSQL_VOLUME, "mode", json!("RO"))),
            path: "container.volumes[0].mode",
            message_fragment: "read-write only: must be \"RW\", got \"RO\"",
        },
        BrokenCase {
            name: "unknown disk type",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_PERSISTENT, "type", json!("tape"))
            }),
            path: "container.volumes[0].persistent.type",
            message_fragment: "\"tape\" is not a volume type; use root, path or mount",
        },
        BrokenCase {
            name: "zero size",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_PERSISTENT, "size", json!(0))
            }),
            path: "container.volumes[0].persistent.size",
            message_fragment: "a size must be greater than zero",
        },
        BrokenCase {
            name: "negative size",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_PERSISTENT, "size", json!(-1))
            }),
            path: "container.volumes[0].persistent.size",
            message_fragment: "\"-1\" is not a size",
        },
        BrokenCase {
            name: "size in words",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_PERSISTENT, "size", json!("ten"))
            }),
            path: "container.volumes[0].persistent.size",
            message_fragment: "must be an integer number of MiB, got \"ten\"",
        },
        BrokenCase {
            name: "fractional size",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_PERSISTENT, "size", json!(1.5))
            }),
            path: "container.volumes[0].persistent.size",
            message_fragment: "got 1.5",
        },
        BrokenCase {
            name: "missing size",
            input: Edited(MYSQL_APP, |doc| remove(doc, MYSQL_PERSISTENT, "size")),
            path: "container.volumes[0].persistent.size",
            message_fragment: "is required",
        },
        BrokenCase {
            name: "maxSize on a root volume",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_PERSISTENT, "maxSize", json!(2000))
            }),
            path: "container.volumes[0].persistent.maxSize",
            message_fragment: "only for type mount (a whole disk), this volume is type root",
        },
        BrokenCase {
            name: "maxSize below size",
            input: Edited(POSTGRES_APP, |doc| {
                set(doc, POSTGRES_PERSISTENT, "maxSize", json!(1000))
            }),
            path: "container.volumes[0].persistent.maxSize",
            message_fragment: "the maximum 1000MiB is below the size 512GiB",
        },
        BrokenCase {
            name: "profileName not a string",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_PERSISTENT, "profileName", json!(7))
            }),
            path: "container.volumes[0].persistent.profileName",
            message_fragment: "must be a string, got 7",
        },
        BrokenCase {
            name: "misspelt persistent field",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_PERSISTENT, "maxsize", json!(7))
            }),
            path: "container.volumes[0].persistent.maxsize",
            message_fragment: "unknown field, expected one of: type, size, maxSize",
        },
        BrokenCase {
            name: "invalid constraint regex",
            input: Edited(POSTGRES_APP, |doc| {
                set(
                    doc,
                    POSTGRES_PERSISTENT,
                    "constraints",
                    json!([["path", "LIKE", "/mnt/(ssd"]]),
                )
            }),
            path: "container.volumes[0].persistent.constraints",
            message_fragment: "constraint 1: \"/mnt/(ssd\" is not a valid regular expression: unclosed group",
        },
        BrokenCase {
            name: "unknown constraint operator",
            input: Edited(POSTGRES_APP, |doc| {
                set(
                    doc,
                    POSTGRES_PERSISTENT,
                    "constraints",
                    json!([["path", "MATCHES", "/mnt/ssd-.+"]]),
                )
            }),
            path: "container.volumes[0].persistent.constraints",
            message_fragment: "must be \"LIKE\" or \"UNLIKE\", got \"MATCHES\"",
        },
        BrokenCase {
            name: "constraint on another field",
            input: Edited(POSTGRES_APP, |doc| {
                set(
                    doc,
                    POSTGRES_PERSISTENT,
                    "constraints",
                    json!([["hostname", "LIKE", "agent-.+"]]),
                )
            }),
            path: "container.volumes[0].persistent.constraints",
            message_fragment: "only \"path\" constraints are supported",
        },
        BrokenCase {
            name: "constraint pair",
            input: Edited(POSTGRES_APP, |doc| {
                set(
                    doc,
                    POSTGRES_PERSISTENT,
                    "constraints",
                    json!([["path", "LIKE"]]),
                )
            }),
            path: "container.volumes[0].persistent.constraints",
            message_fragment: "constraint 1: must be a triple",
        },
        BrokenCase {
            name: "alias naming no persistent volume",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_ALIAS, "hostPath", json!("mysql-data"))
            }),
            path: "container.volumes[1].hostPath",
            message_fragment: "\"mysql-data\" does not name a persistent volume of this app",
        },
        BrokenCase {
            name: "alias climbing out of the container",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_ALIAS, "containerPath", json!("/var/../../etc"))
            }),
            path: "container.volumes[1].containerPath",
            message_fragment: "must not contain \"..\" segments",
        },
        BrokenCase {
            name: "two volumes at one containerPath",
            input: Edited(MYSQL_APP, |doc| {
                set(doc, MYSQL_ALIAS, "containerPath", json!("mysqldata"))
            }),
            path: "container.volumes[1].containerPath",
            message_fragment: "\"mysqldata\" is already used by container.volumes[0]",
        },
        BrokenCase {
            name: "unreachableStrategy missing",
            input: Edited(MYSQL_APP, |doc| remove(doc, "", "unreachableStrategy")),
            path: "unreachableStrategy",
            message_fragment: "must be \"disabled\" for an app with persistent volumes, but is absent",
        },
        BrokenCase {
            name: "unreachableStrategy with timeouts",
            input: Edited(MYSQL_APP, |doc| {
                set(
                    doc,
                    "",
                    "unreachableStrategy",
                    json!({"inactiveAfterSeconds": 0}),
                )
            }),
            path: "unreachableStrategy",
            message_fragment: "must be \"disabled\" for an app with persistent volumes, got an object",
        },
        BrokenCase {
            name: "minimumHealthCapacity above 0.5",
            input: Edited(POSTGRES_APP, |doc| {
                set(doc, "/upgradeStrategy", "minimumHealthCapacity", json!(0.8))
            }),
            path: "upgradeStrategy.minimumHealthCapacity",
            message_fragment: "must be at most 0.5 for an app with persistent volumes, got 0.8",
        },
        BrokenCase {
            name: "maximumOverCapacity above 0",
            input: Edited(POSTGRES_APP, |doc| {
                set(doc, "/upgradeStrategy", "maximumOverCapacity", json!(0.2))
            }),
            path: "upgradeStrategy.maximumOverCapacity",
            message_fragment: "must be 0 for an app with persistent volumes, got 0.2",
        },
        BrokenCase {
            name: "app volumes at the top level",
            input: Edited(MYSQL_APP, |doc| set(doc, "", "volumes", json!([]))),
            path: "volumes",
            message_fragment: "apps declare volumes in container.volumes",
        },
        BrokenCase {
            name: "missing id",
            input: Edited(MYSQL_APP, |doc| remove(doc, "", "id")),
            path: "id",
            message_fragment: "is required",
        },
        BrokenCase {
            name: "pod mount of an undeclared volume",
            input: Edited(PERSISTENT_POD, |doc| {
                set(doc, "/containers/1/volumeMounts/0", "name", json!("ghost"))
            }),
            path: "containers[1].volumeMounts[0].name",
            message_fragment: "no volume named \"ghost\" is declared in this pod's volumes (declared: \"pst\")",
        },
        BrokenCase {
            name: "pod mount without a mountPath",
            input: Edited(PERSISTENT_POD, |doc| {
                set(doc, "/containers/0/volumeMounts/0", "mountPath", json!(""))
            }),
            path: "containers[0].volumeMounts[0].mountPath",
            message_fragment: "must not be empty",
        },
        BrokenCase {
            name: "pod mount readOnly as a string",
            input: Edited(PERSISTENT_POD, |doc| {
                set(doc, "/containers/0/volumeMounts/0", "readOnly", json!("no"))
            }),
            path: "containers[0].volumeMounts[0].readOnly",
            message_fragment: "must be true or false, got \"no\"",
        },
        BrokenCase {
            name: "pod volume declared twice",
            input: Edited(PERSISTENT_POD, |doc| {
                doc["volumes"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"name": "pst"}))
            }),
            path: "volumes[1].name",
            message_fragment: "\"pst\" is already declared by volumes[0]",
        },
        BrokenCase {
            name: "pod without disabled unreachableStrategy",
            input: Edited(PERSISTENT_POD, |doc| {
                remove(doc, "/scheduling", "unreachableStrategy")
            }),
            path: "scheduling.unreachableStrategy",
            message_fragment: "must be \"disabled\" for a pod with persistent volumes",
        },
        BrokenCase {
            name: "pod upgrade over capacity",
            input: Edited(PERSISTENT_POD, |doc| {
                set(doc, "/scheduling/upgrade", "maximumOverCapacity", json!(1))
            }),
            path: "scheduling.upgrade.maximumOverCapacity",
            message_fragment: "must be 0 for a pod with persistent volumes, got 1",
        },
        BrokenCase {
            name: "pod persistent volume size in words",
            input: Edited(PERSISTENT_POD, |doc| {
                set(doc, "/volumes/0/persistent", "size", json!("ten"))
            }),
            path: "volumes[0].persistent.size",
            message_fragment: "must be an integer number of MiB, got \"ten\"",
        },
        BrokenCase {
            name: "malformed JSON",
            input: Raw("{\"id\": \"/mysql\", \"container\": {"),
            path: "",
            message_fragment: "not valid JSON: EOF while parsing",
        },
        BrokenCase {
            name: "not an object",
            input: Raw("[]"),
            path: "",
            message_fragment: "must be a JSON object, got an array",
        },
    ]
}

#[test]
fn broken_definitions_report_one_violation_at_the_right_path() {
    let cases = broken_cases();
    assert!(cases.len() >= 15);
    for case in cases {
        let json = match case.input {
            Input::Edited(fixture, edit) => edited(fixture, edit),
            Input::Raw(text) => text.to_owned(),
        };
        let violations = violations_of(&json);
        assert_eq!(
            violations.len(),
            1,
            "{}: expected exactly one violation, got {violations:#?}",
            case.name
        );
        let violation = &violations[0];
        assert_eq!(violation.path, case.path, "{}: wrong path", case.name);
        assert!(
            violation.message.contains(case.message_fragment),
            "{}: message {:?} lacks {:?}",
            case.name,
            violation.message,
            case.message_fragment
        );
    }
}
