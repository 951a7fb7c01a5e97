//! ipadm.conf and aobjmap.conf: parsing never panics, and what parses
//! serializes to text that parses to the same thing. (A file of an older
//! version is written back upgraded: there every record must survive, and
//! lines that were bad may become good under the new version.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use toolbox::ipmgmtd::aobjmap::AobjMap;
use toolbox::ipmgmtd::datastore::Datastore;

fuzz_target!(|data: &[u8]| {
    if let Ok(loaded) = Datastore::parse(data) {
        let again = Datastore::parse(&loaded.store.serialize()).expect("serialized store parses");
        if again.version == loaded.version {
            assert_eq!(again.store, loaded.store);
        } else {
            let kept: Vec<_> = again.store.records().collect();
            assert!(
                loaded.store.records().all(|r| kept.contains(&r)),
                "a record was lost"
            );
        }
    }
    let (map, _bad) = AobjMap::parse(data);
    let (again, bad) = AobjMap::parse(&map.serialize());
    assert!(bad.is_empty(), "serialized map has bad lines: {bad:?}");
    assert_eq!(again, map);
});
