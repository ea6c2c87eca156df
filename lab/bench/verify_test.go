package bench

import (
	"slices"
	"testing"
)

// The samples are `ip -j link show dev cw0` and `ip -j route get
// 10.20.0.0` on office-1 with Causeway running.
func TestParseLink(t *testing.T) {
	l, err := parseLink(readTestdata(t, "ip-link.json"))
	if err != nil {
		t.Fatal(err)
	}
	if l.Name != "cw0" || l.MTU != 1340 || !slices.Contains(l.Flags, "UP") {
		t.Errorf("got %+v, want cw0, MTU 1340, UP", l)
	}
	for _, in := range []string{"", "[]", `[{"ifname":"a","mtu":1},{"ifname":"b","mtu":2}]`, "Device \"cw0\" does not exist."} {
		if _, err := parseLink([]byte(in)); err == nil {
			t.Errorf("parseLink(%q): want an error", in)
		}
	}
}

func TestParseRouteDev(t *testing.T) {
	dev, err := parseRouteDev(readTestdata(t, "ip-route-get.json"))
	if err != nil || dev != "cw0" {
		t.Errorf("got %q, %v; want cw0", dev, err)
	}
	for _, in := range []string{"", "[]", `[{"dst":"10.20.0.0"}]`} {
		if _, err := parseRouteDev([]byte(in)); err == nil {
			t.Errorf("parseRouteDev(%q): want an error", in)
		}
	}
}
