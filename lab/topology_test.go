package lab

import (
	"net/netip"
	"path/filepath"
	"slices"
	"testing"

	"github.com/causeway-net/causeway/appliance"
)

func TestNetnsNames(t *testing.T) {
	for _, node := range labTopology.nodeNames() {
		name := netnsName("demo", node)
		inst, n, ok := parseNetnsName(name)
		if !ok || inst != "demo" || n != node {
			t.Errorf("parseNetnsName(%q) = %q, %q, %v; want demo, %q, true", name, inst, n, ok, node)
		}
	}
	for _, name := range []string{
		"cw-demo-nosuchnode", // not a node of ours
		"cw-demo-",
		"cw-demo",
		"cwx-demo-inet",
		"cw-DEMO-inet",            // instance not lower case
		"cw-abcdefghi-inet",       // instance over 8 characters
		"cw--inet",                // empty instance
		"bdev-inet",               // someone else's
		"cw-demo-office-1-host-x", // not a node of ours
	} {
		if inst, node, ok := parseNetnsName(name); ok {
			t.Errorf("parseNetnsName(%q) = %q, %q, true; want not ours", name, inst, node)
		}
	}
}

func TestValidInstance(t *testing.T) {
	for _, s := range []string{"demo", "a", "t1", "12345678"} {
		if !ValidInstance(s) {
			t.Errorf("ValidInstance(%q) = false", s)
		}
	}
	for _, s := range []string{"", "123456789", "Demo", "de-mo", "de_mo", "dé"} {
		if ValidInstance(s) {
			t.Errorf("ValidInstance(%q) = true", s)
		}
	}
}

// TestTopology checks the invariants the builder relies on.
func TestTopology(t *testing.T) {
	top := newTopology()
	allowed := []netip.Prefix{pfx("198.18.0.0/15"), pfx("10.0.0.0/8"), pfx("172.16.0.0/12")}
	names := map[string]bool{}
	for _, n := range top.nodes {
		if names[n.name] {
			t.Errorf("node %s twice", n.name)
		}
		names[n.name] = true
		// The longest namespace name must stay short enough to type.
		if l := len(netnsName("12345678", n.name)); l > 64 {
			t.Errorf("namespace name for %s is %d bytes", n.name, l)
		}
	}
	ifnames := map[[2]string]bool{}
	addrs := map[netip.Addr]string{}
	for _, br := range top.bridges {
		ifnames[[2]string{br.node, br.name}] = true
	}
	for _, v := range top.veths {
		for _, e := range []iface{v.a, v.b} {
			if !names[e.node] {
				t.Errorf("interface %s in unknown node %s", e.name, e.node)
			}
			if len(e.name) > 15 || e.name == "" {
				t.Errorf("%s: interface name %q longer than IFNAMSIZ-1", e.node, e.name)
			}
			key := [2]string{e.node, e.name}
			if ifnames[key] {
				t.Errorf("%s: interface %s twice", e.node, e.name)
			}
			ifnames[key] = true
			if e.bridge != "" && !ifnames[[2]string{e.node, e.bridge}] {
				t.Errorf("%s/%s: no bridge %s", e.node, e.name, e.bridge)
			}
			if !e.addr.IsValid() {
				continue
			}
			if prev, dup := addrs[e.addr.Addr()]; dup {
				t.Errorf("%s on %s/%s and %s", e.addr.Addr(), e.node, e.name, prev)
			}
			addrs[e.addr.Addr()] = e.node + "/" + e.name
			if !slices.ContainsFunc(allowed, func(p netip.Prefix) bool { return p.Contains(e.addr.Addr()) }) {
				t.Errorf("%s/%s: %s is outside the lab's ranges", e.node, e.name, e.addr)
			}
		}
		// Both ends of a routed link share a subnet.
		if v.a.addr.IsValid() && v.b.addr.IsValid() && v.a.addr.Masked() != v.b.addr.Masked() {
			t.Errorf("link %s-%s: %s and %s are not on one subnet", v.a.node, v.b.node, v.a.addr, v.b.addr)
		}
	}
	for _, r := range top.routes {
		onLink := slices.ContainsFunc(top.ifaces(r.node), func(e iface) bool { return e.addr.IsValid() && e.addr.Contains(r.via) })
		if !onLink {
			t.Errorf("%s: gateway %s is on none of its links", r.node, r.via)
		}
	}
	var lans []netip.Prefix
	for _, a := range top.appliances {
		if n := top.node(a.name); n == nil || n.role != RoleAppliance {
			t.Errorf("appliance %s has no appliance node", a.name)
		}
		if !appliance.OverlayRange.Contains(a.overlay) {
			t.Errorf("appliance %s: overlay %s outside %s", a.name, a.overlay, appliance.OverlayRange)
		}
		if !top.iface(a.name, a.wan).addr.IsValid() {
			t.Errorf("appliance %s: uplink %s has no address", a.name, a.wan)
		}
		for _, p := range a.lan {
			for _, q := range lans {
				if p.Overlaps(q) {
					t.Errorf("LAN %s overlaps %s", p, q)
				}
			}
			lans = append(lans, p)
			if p.Contains(unannouncedAddr) {
				t.Errorf("%s announces %s, which must stay unannounced", a.name, unannouncedAddr)
			}
		}
	}
	if m := top.iface("home-1-router", "wan0"); top.minUnderlayMTU() != homeISPMTU || m.name == "" {
		t.Errorf("the home ISP link should be the %d-byte underlay", homeISPMTU)
	}
	for _, sv := range top.services {
		if !slices.Contains(top.addrs(sv.host), sv.listen.Addr()) {
			t.Errorf("service %s listens on %s, not an address of %s", sv.name, sv.listen, sv.host)
		}
	}
}

func TestApplianceConfigs(t *testing.T) {
	dir := t.TempDir()
	cfgs, err := applianceConfigs(labTopology, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range labTopology.appliances {
		path, err := writeApplianceConfig(cfgs[a.name])
		if err != nil {
			t.Fatal(err)
		}
		if want := filepath.Join(dir, a.name, configFileName); path != want {
			t.Errorf("config at %s, want %s", path, want)
		}
		cfg, err := appliance.LoadConfig(path)
		if err != nil {
			t.Fatalf("the appliance refuses the lab's config: %v", err)
		}
		if cfg.MTU != 0 {
			t.Errorf("%s: mtu %d; the appliance should derive it", a.name, cfg.MTU)
		}
		if len(cfg.Peers) != len(labTopology.appliances)-1 {
			t.Errorf("%s: %d peers", a.name, len(cfg.Peers))
		}
		for _, p := range cfg.Peers {
			peer := labTopology.appliance(p.Name)
			if peer.natted && len(p.Endpoints) != 0 {
				t.Errorf("%s lists %s, which is behind NAT, with endpoints %v", a.name, p.Name, p.Endpoints)
			}
			if !peer.natted && len(p.Endpoints) != 1 {
				t.Errorf("%s lists %s with endpoints %v, want its WAN address", a.name, p.Name, p.Endpoints)
			}
			if a.natted != (p.Keepalive == natKeepalive) {
				t.Errorf("%s: keepalive %v towards %s", a.name, p.Keepalive, p.Name)
			}
			if !slices.Equal(p.Prefixes, peer.lan) {
				t.Errorf("%s: peer %s prefixes %v, want %v", a.name, p.Name, p.Prefixes, peer.lan)
			}
		}
	}
	// Keys are made once: a second call sees the same ones.
	again, err := applianceConfigs(labTopology, dir)
	if err != nil {
		t.Fatal(err)
	}
	if again["office-1"].Peers[0].PublicKey != cfgs["office-1"].Peers[0].PublicKey {
		t.Error("keys changed between two calls")
	}
}

func TestNetipMask(t *testing.T) {
	for _, tc := range []struct {
		p    string
		want []byte
	}{
		{"172.16.30.0/24", []byte{255, 255, 255, 0}},
		{"10.0.0.0/9", []byte{255, 128, 0, 0}},
		{"0.0.0.0/0", []byte{0, 0, 0, 0}},
		{"10.1.2.3/32", []byte{255, 255, 255, 255}},
	} {
		if got := netipMask(pfx(tc.p)); !slices.Equal(got, tc.want) {
			t.Errorf("netipMask(%s) = %v, want %v", tc.p, got, tc.want)
		}
	}
}
