use super::*;
use flotilla_proto::v1::{IpamPool, NetworkAttachmentSpec, Node, NodeDescription, StoreSnapshot};

fn net(id: &str, subnet: &str) -> Network {
    let s: Ipv4Net = subnet.parse().unwrap();
    Network {
        id: id.into(),
        subnet: subnet.into(),
        gateway: s.hosts().next().unwrap().to_string(),
        ..Default::default()
    }
}

fn node_with_host_nets(id: &str, nets: &[&str]) -> Node {
    Node {
        id: id.into(),
        description: Some(NodeDescription {
            host_networks: nets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn subnet_allocation_table() {
    let pool = parse_pool(DEFAULT_POOL).unwrap();
    // (existing networks, host networks, spec subnet, expected subnet or error)
    type Case<'a> = (
        Vec<&'a str>,
        Vec<&'a str>,
        Option<&'a str>,
        Result<&'a str, &'a str>,
    );
    let cases: Vec<Case> = vec![
        (vec![], vec![], None, Ok("10.89.0.0/24")),
        (vec!["10.89.0.0/24"], vec![], None, Ok("10.89.1.0/24")),
        // A host route over the first two /24s pushes the allocation past it.
        (
            vec![],
            vec!["10.89.0.0/23", "192.168.1.0/24"],
            None,
            Ok("10.89.2.0/24"),
        ),
        (
            vec!["10.89.1.0/24"],
            vec!["10.89.0.5/32"],
            None,
            Ok("10.89.2.0/24"),
        ),
        // The whole pool is routed on a host: nothing left.
        (vec![], vec!["10.0.0.0/8"], None, Err("no free /24")),
        (vec![], vec![], Some("172.30.5.0/24"), Ok("172.30.5.0/24")),
        (
            vec!["172.30.0.0/16"],
            vec![],
            Some("172.30.5.0/24"),
            Err("overlaps"),
        ),
        (vec![], vec![], Some("bogus"), Err("not an IPv4 CIDR")),
    ];
    for (i, (existing, host, requested, want)) in cases.into_iter().enumerate() {
        let snap = StoreSnapshot {
            networks: existing
                .iter()
                .enumerate()
                .map(|(j, s)| net(&format!("s_n{j}"), s))
                .collect(),
            nodes: vec![node_with_host_nets("node1", &host)],
            ..Default::default()
        };
        let spec = requested.map(|r| NetworkSpec {
            name: "x".into(),
            ipam: vec![IpamPool {
                subnet: r.into(),
                ..Default::default()
            }],
            ..Default::default()
        });
        let got = allocate_subnet(pool, "s_x", spec.as_ref(), &used_subnets(&snap));
        match (got, want) {
            (Ok((subnet, gw)), Ok(w)) => {
                assert_eq!(subnet.to_string(), w, "case {i}");
                assert_eq!(
                    gw,
                    subnet.hosts().next().unwrap(),
                    "case {i}: gateway is .1"
                );
            }
            (Err(e), Err(w)) => assert!(e.to_string().contains(w), "case {i}: {e}"),
            (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn bridge_names_are_short_stable_and_distinct() {
    let a = bridge_name("web_default");
    assert_eq!(a, bridge_name("web_default"));
    assert_ne!(a, bridge_name("web_backend"));
    assert!(a.starts_with("flt-"));
    assert_eq!(a.len(), 15);
}

#[test]
fn mac_from_ip() {
    assert_eq!(mac_for("10.89.0.2".parse().unwrap()), "02:42:0a:59:00:02");
}

fn stack_service(name: &str, networks: Vec<NetworkAttachmentSpec>) -> Service {
    Service {
        id: format!("s_{name}"),
        stack: "s".into(),
        spec: Some(ServiceSpec {
            name: name.into(),
            networks,
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn slot_addresses_are_stable_and_released() {
    let snap = StoreSnapshot {
        networks: vec![net("s_default", "10.89.0.0/24")],
        ..Default::default()
    };
    let mut book = AddressBook::from_view(&snap);
    let mut svc = stack_service("web", vec![]);
    let atts = service_attachments("s", None, svc.spec.as_ref().unwrap());
    assert_eq!(atts[0].network_id, "s_default");

    assert!(ensure_vips(&mut book, &mut svc, &atts).unwrap());
    assert_eq!(svc.vips[0].address, "10.89.0.2/24");
    assert!(ensure_slot_addresses(&mut book, &mut svc, 1, &atts).unwrap());
    assert!(ensure_slot_addresses(&mut book, &mut svc, 2, &atts).unwrap());
    assert_eq!(
        slot_attachments(&svc, 1, &atts)[0].addresses,
        vec!["10.89.0.3/24"]
    );
    assert_eq!(
        slot_attachments(&svc, 2, &atts)[0].mac_address,
        "02:42:0a:59:00:04"
    );
    // Asking again changes nothing: the slot keeps its address.
    assert!(!ensure_slot_addresses(&mut book, &mut svc, 1, &atts).unwrap());
    assert!(!ensure_vips(&mut book, &mut svc, &atts).unwrap());

    // A fresh book from the stored service sees the same addresses as taken.
    let snap2 = StoreSnapshot {
        networks: snap.networks.clone(),
        services: vec![svc.clone()],
        ..Default::default()
    };
    let mut book2 = AddressBook::from_view(&snap2);
    let mut other = stack_service("db", vec![]);
    ensure_slot_addresses(&mut book2, &mut other, 1, &atts).unwrap();
    assert_eq!(other.slot_addresses[0].address, "10.89.0.5/24");

    // Releasing slot 2 frees its address for the next allocation.
    assert!(release_slot(&mut book2, &mut svc, 2));
    assert!(!release_slot(&mut book2, &mut svc, 2));
    ensure_slot_addresses(&mut book2, &mut other, 2, &atts).unwrap();
    assert_eq!(
        other
            .slot_addresses
            .iter()
            .find(|s| s.slot == 2)
            .unwrap()
            .address,
        "10.89.0.4/24"
    );
}

#[test]
fn pins_table() {
    let snap = StoreSnapshot {
        networks: vec![net("s_back", "172.30.0.0/24")],
        services: vec![{
            let mut s = stack_service("cache", vec![]);
            s.slot_addresses.push(SlotAddress {
                slot: 1,
                network_id: "s_back".into(),
                address: "172.30.0.9/24".into(),
                mac_address: String::new(),
            });
            s
        }],
        ..Default::default()
    };
    // (pinned address, expected address or error)
    let cases = [
        ("172.30.0.50", Ok("172.30.0.50/24")),
        ("172.30.1.50", Err("outside")),
        ("172.30.0.9", Err("already used")),
        ("172.30.0.1", Err("already used")),
        ("nope", Err("not an IPv4 address")),
    ];
    for (pin, want) in cases {
        let mut book = AddressBook::from_view(&snap);
        let mut svc = stack_service(
            "db",
            vec![NetworkAttachmentSpec {
                network: "back".into(),
                ipv4_address: pin.into(),
                ..Default::default()
            }],
        );
        let atts = service_attachments("s", None, svc.spec.as_ref().unwrap());
        let got = ensure_slot_addresses(&mut book, &mut svc, 1, &atts);
        match want {
            Ok(w) => {
                got.unwrap();
                assert_eq!(svc.slot_addresses[0].address, w);
            }
            Err(w) => assert!(got.unwrap_err().to_string().contains(w), "pin {pin}"),
        }
    }
}

#[test]
fn pinned_address_is_not_given_to_others_first() {
    let mut pinned = stack_service(
        "db",
        vec![NetworkAttachmentSpec {
            network: "back".into(),
            ipv4_address: "172.30.0.2".into(),
            ..Default::default()
        }],
    );
    let snap = StoreSnapshot {
        networks: vec![net("s_back", "172.30.0.0/24")],
        services: vec![pinned.clone()],
        ..Default::default()
    };
    let mut book = AddressBook::from_view(&snap);
    let mut other = stack_service(
        "web",
        vec![NetworkAttachmentSpec {
            network: "back".into(),
            ..Default::default()
        }],
    );
    let atts = service_attachments("s", None, other.spec.as_ref().unwrap());
    ensure_slot_addresses(&mut book, &mut other, 1, &atts).unwrap();
    assert_eq!(other.slot_addresses[0].address, "172.30.0.3/24");
    let patts = service_attachments("s", None, pinned.spec.as_ref().unwrap());
    ensure_slot_addresses(&mut book, &mut pinned, 1, &patts).unwrap();
    assert_eq!(pinned.slot_addresses[0].address, "172.30.0.2/24");
}

#[test]
fn attachments_follow_network_mode_and_priority() {
    let mut spec = ServiceSpec {
        network_mode: "host".into(),
        ..Default::default()
    };
    assert!(service_attachments("s", None, &spec).is_empty());
    spec.network_mode.clear();
    spec.networks = vec![
        NetworkAttachmentSpec {
            network: "a".into(),
            priority: 1,
            ..Default::default()
        },
        NetworkAttachmentSpec {
            network: "b".into(),
            priority: 5,
            ..Default::default()
        },
    ];
    let ids: Vec<String> = service_attachments("s", None, &spec)
        .into_iter()
        .map(|a| a.network_id)
        .collect();
    assert_eq!(ids, vec!["s_b", "s_a"]);
}

#[test]
fn ip_range_limits_dynamic_addresses_and_aux_addresses_are_reserved() {
    let mut n = net("shared", "172.30.5.0/24");
    n.spec = Some(NetworkSpec {
        name: "shared".into(),
        ipam: vec![IpamPool {
            subnet: "172.30.5.0/24".into(),
            ip_range: "172.30.5.128/30".into(),
            aux_addresses: [("printer".to_string(), "172.30.5.129".to_string())].into(),
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut book = AddressBook::default();
    book.add_network(&n);
    let got: Vec<Ipv4Addr> = (0..3)
        .map(|i| book.allocate("shared", format!("t{i}")).unwrap())
        .collect();
    // .129 is the aux address; the range holds .128-.131.
    assert_eq!(
        got,
        vec![
            "172.30.5.130".parse::<Ipv4Addr>().unwrap(),
            "172.30.5.128".parse().unwrap(),
            "172.30.5.131".parse().unwrap(),
        ]
    );
    assert!(matches!(
        book.allocate("shared", "t4".into()),
        Err(IpamError::SubnetFull { .. })
    ));
    // A pin outside the range but inside the subnet is still fine.
    assert!(book.reserve_pin("shared", "s_x", 1, "172.30.5.9").is_ok());
}

#[test]
fn ipv6_subnets_and_addresses() {
    let spec = |subnets: &[&str]| NetworkSpec {
        enable_ipv6: true,
        ipam: subnets
            .iter()
            .map(|s| IpamPool {
                subnet: s.to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    // Derived: a ULA /64, the same every time for the same network, another
    // for another network.
    let (a, ga) = allocate_subnet_v6("s_default", Some(&spec(&[]))).unwrap();
    let (a2, _) = allocate_subnet_v6("s_default", Some(&spec(&[]))).unwrap();
    let (b, _) = allocate_subnet_v6("s_back", Some(&spec(&[]))).unwrap();
    assert_eq!(a, a2);
    assert_ne!(a, b);
    assert_eq!(a.prefix_len(), 64);
    assert_eq!(a.network().octets()[0], 0xfd);
    assert_eq!(u128::from(ga), u128::from(a.network()) | 1);
    // Given: the IPv6 pool of the list; the IPv4 one stays allocate_subnet's.
    let given = spec(&["172.30.0.0/24", "fd00:1:2::/80"]);
    let (c, gc) = allocate_subnet_v6("s_x", Some(&given)).unwrap();
    assert_eq!(c.to_string(), "fd00:1:2::/80");
    assert_eq!(gc.to_string(), "fd00:1:2::1");
    let pool = parse_pool(DEFAULT_POOL).unwrap();
    let (v4, _) = allocate_subnet(pool, "s_x", Some(&given), &[]).unwrap();
    assert_eq!(v4.to_string(), "172.30.0.0/24");
    // Too small to hold an IPv4 host number, or not IPv6 at all.
    assert!(matches!(
        allocate_subnet_v6("s_x", Some(&spec(&["fd00::/112"]))),
        Err(IpamError::BadSubnet { .. })
    ));
    assert!(matches!(
        allocate_subnet_v6("s_x", Some(&spec(&["fd00::zz/64"]))),
        Err(IpamError::BadSubnet { .. })
    ));
    // A holder's IPv6 address carries its IPv4 address: stable with it.
    assert_eq!(
        v6_address("fd00:1:2::/80", "172.30.0.7/24").as_deref(),
        Some("fd00:1:2::ac1e:7/80")
    );
    assert_eq!(v6_address("fd00:1:2::/80", "bogus"), None);
}
