package lab

import (
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/appliance"
	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/probes"
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
		if a.kind != "office" && a.kind != "vpc" && a.kind != "home" && a.kind != "remote" {
			t.Errorf("appliance %s: site kind %q", a.name, a.kind)
		}
		metrics := map[int]bool{}
		for _, w := range a.wans {
			e := top.iface(a.name, w)
			if !e.addr.IsValid() {
				t.Errorf("appliance %s: uplink %s has no address", a.name, w)
			}
			// One default route via each uplink, each with its own metric.
			i := slices.IndexFunc(top.routes, func(r route) bool {
				return r.node == a.name && !r.dst.IsValid() && e.addr.Contains(r.via)
			})
			if i < 0 || metrics[top.routes[i].metric] {
				t.Errorf("appliance %s: no default route of its own via %s", a.name, w)
			} else {
				metrics[top.routes[i].metric] = true
			}
		}
		if p := a.pair; p != nil {
			// The members know each other: one site, one LAN, each other's
			// partner, the VIP in the LAN and on no interface.
			o := top.appliance(p.partner)
			lan := top.iface(a.name, "lan0").addr
			if o == nil || o.pair == nil || o.pair.partner != a.name || o.site != a.site || !slices.Equal(o.lan, a.lan) ||
				o.pair.vip != p.vip || !lan.Contains(p.vip.Addr()) || !lan.Contains(top.lanAddr(p.partner)) ||
				slices.Contains(top.addrs(a.name), p.vip.Addr()) || p.borrowed != o.wans[0] || len(a.wans) != 1 {
				t.Errorf("pair member %s: %+v, partner %+v", a.name, p, o)
			}
			continue // the partner announces the same LAN
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
	if c := top.controller; top.node(c.node) == nil || top.node(c.node).role != RoleController ||
		!slices.Contains(top.addrs(c.node), c.listen.Addr()) {
		t.Errorf("the controller listens on %s, not an address of a controller node %s", c.listen, c.node)
	}
	for _, sv := range top.services {
		if !slices.Contains(top.addrs(sv.host), sv.listen.Addr()) {
			t.Errorf("service %s listens on %s, not an address of %s", sv.name, sv.listen, sv.host)
		}
	}
}

// TestApplianceArgv checks the command line of the managed appliances:
// every one follows the lab's controller and pins its CA, and only those
// not behind NAT report an endpoint.
func TestApplianceArgv(t *testing.T) {
	l := &Lab{t: labTopology, instance: "demo", dir: "/run/causeway-lab/demo", binary: "/bin/causeway"}
	for _, a := range labTopology.appliances {
		argv := strings.Join(l.applianceArgv(labTopology.appliance(a.name), "ab12"), " ")
		for _, want := range []string{
			"/bin/causeway appliance --controller https://198.18.0.2:8443 --ca-fingerprint ab12",
			"--state-dir /run/causeway-lab/demo/" + a.name, "--name " + a.name, "--uplinks " + strings.Join(a.wans, ","),
		} {
			if !strings.Contains(argv, want) {
				t.Errorf("%s: %s lacks %q", a.name, argv, want)
			}
		}
		// The pair members reach both ISPs: their own, and the partner's
		// through the partner's lend port. Every appliance cuts a usage
		// record every UsageInterval.
		if want := map[string]string{
			"office-1a": "--uplinks wan1 --endpoints 198.18.1.2:51820,198.18.4.2:51821 --gateway lan0 --pair-vip 10.10.0.1/24 " +
				"--pair-lan-addr 10.10.0.2 --pair-partner-lan-addr 10.10.0.3 --pair-wan-interface wan1 --pair-wan-addr 198.18.1.2 " +
				"--pair-partner-wan 198.18.4.2 --pair-borrowed-uplink wan2 --pair-lend-port 51821 --pair-priority 200 --pair-preempt --usage-interval 2s",
			"office-1b": "--uplinks wan2 --endpoints 198.18.4.2:51820,198.18.1.2:51821 --gateway lan0 --pair-vip 10.10.0.1/24 " +
				"--pair-lan-addr 10.10.0.3 --pair-partner-lan-addr 10.10.0.2 --pair-wan-interface wan2 --pair-wan-addr 198.18.4.2 " +
				"--pair-partner-wan 198.18.1.2 --pair-borrowed-uplink wan1 --pair-lend-port 51821 --pair-priority 100 --pair-preempt --usage-interval 2s",
		}[a.name]; want != "" && !strings.HasSuffix(argv, want) {
			t.Errorf("%s: %s\nwant it to end in %s", a.name, argv, want)
		}
		if got := strings.Contains(argv, "--gateway lan0"); got != (a.pair != nil) {
			t.Errorf("%s: --gateway lan0 is for office-1's pair only: %s", a.name, argv)
		}
		if strings.Contains(argv, "--token") {
			t.Errorf("%s: the one-time token belongs in the environment, not the command line: %s", a.name, argv)
		}
		var eps []string
		for _, w := range a.wans {
			eps = append(eps, labTopology.iface(a.name, w).addr.Addr().String()+":51820")
		}
		if got := strings.Contains(argv, "--endpoints "+strings.Join(eps, ",")); got == a.natted {
			t.Errorf("%s (behind NAT: %v): %s", a.name, a.natted, argv)
		}
	}
}

// TestApplianceConfigFromNetmap checks that ApplianceConfig derives the
// config from the saved netmap with the lab's local settings, as the
// appliance itself does.
func TestApplianceConfigFromNetmap(t *testing.T) {
	dir := t.TempDir()
	l := &Lab{t: labTopology, instance: "demo", dir: dir}
	if l.ApplianceConfig("office-1a") != nil {
		t.Error("a config before any netmap")
	}
	k, err := appliance.LoadOrCreateKey(filepath.Join(dir, "vpc-1"))
	if err != nil {
		t.Fatal(err)
	}
	kb, err := appliance.LoadOrCreateKey(filepath.Join(dir, "office-1b"))
	if err != nil {
		t.Fatal(err)
	}
	probeKey, err := probes.ParseKey(1, "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=")
	if err != nil {
		t.Fatal(err)
	}
	lan := []netip.Prefix{pfx("10.10.0.0/24")}
	nm := &netmap.Netmap{
		Version: 7, Tenant: "tn_1", Appliance: "ap_1", Site: "st_1", Name: "office-1a",
		OverlayAddr: addr("100.64.0.1"), LANPrefixes: lan,
		Probes: netmap.Probes{Keys: []probes.Key{probeKey}, Interval: 200 * time.Millisecond},
		Pair:   &netmap.Pair{Priority: 200},
		Peers: []netmap.Peer{
			{Name: "office-1b", Site: "st_1", PublicKey: kb.Public(), OverlayAddr: addr("100.64.0.2"),
				Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.4.2:51820")}, Prefixes: lan,
				Pair: &netmap.PeerPair{Priority: 100}},
			{Name: "vpc-1", Site: "st_2", PublicKey: k.Public(), OverlayAddr: addr("100.64.0.3"),
				Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.2.2:51820")}, Prefixes: []netip.Prefix{pfx("10.20.0.0/24")}}},
	}
	if err := appliance.SaveNetmap(filepath.Join(dir, "office-1a"), nm); err != nil {
		t.Fatal(err)
	}
	cfg := l.ApplianceConfig("office-1a")
	if cfg == nil {
		t.Fatal("no config from a saved netmap")
	}
	if cfg.Name != "office-1a" || cfg.OverlayAddr != addr("100.64.0.1") || cfg.ListenPort != 51820 || cfg.MTU != 0 ||
		cfg.StateDir != filepath.Join(dir, "office-1a") || cfg.Interface != "cw0" ||
		len(cfg.Uplinks) != 1 || cfg.Uplinks[0].Interface != "wan1" || len(cfg.Peers) != 2 || cfg.Peers[1].PublicKey != k.Public() {
		t.Errorf("config %+v", cfg)
	}
	if cfg.Gateway == nil || cfg.Gateway.LANInterface != "lan0" || len(cfg.Gateway.Uplinks) != 0 {
		t.Errorf("office-1a is not the gateway of lan0 over every uplink: %+v", cfg.Gateway)
	}
	want := appliance.PairLocal{Preempt: true, LANInterface: "lan0", LANAddr: addr("10.10.0.2"), PartnerLANAddr: addr("10.10.0.3"),
		VIP: officeVIP, WANInterface: "wan1", WANAddr: addr("198.18.1.2"), PartnerWANAddr: addr("198.18.4.2"),
		BorrowedUplink: "wan2", LendPort: 51821}
	if p := cfg.Pair; p == nil || p.Priority != 200 || p.Site != "st_1" || p.Member == nil || *p.Member != want {
		t.Errorf("office-1a's pair: %+v %+v", p, p.Member)
	}
	if l.ApplianceConfig("nosuch") != nil {
		t.Error("a config for an appliance the lab does not have")
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
