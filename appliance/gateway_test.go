package appliance

import (
	"encoding/json"
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/causeway-net/causeway/probes"
)

// gatewayConfig is validConfig with a gateway over its two uplinks.
func gatewayConfig(gw string) []byte {
	return []byte(strings.Replace(validConfig, `"probe_interval"`, `"gateway": `+gw+`, "probe_interval"`, 1))
}

func TestGatewayConfig(t *testing.T) {
	c, err := ParseConfig(gatewayConfig(`{"lan_interface": "lan0", "uplinks": [{"name": "wan2", "via": "198.18.5.1"}, {"name": "wan1"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	want := &GatewayConfig{LANInterface: "lan0", Uplinks: []GatewayUplink{
		{Name: "wan2", Via: netip.MustParseAddr("198.18.5.1")}, {Name: "wan1"}}}
	if !reflect.DeepEqual(c.Gateway, want) {
		t.Errorf("gateway %+v, want %+v", c.Gateway, want)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ParseConfig(b)
	if err != nil || !reflect.DeepEqual(c, c2) {
		t.Errorf("round trip: %v\n%s", err, b)
	}
	if c, err := ParseConfig(gatewayConfig(`{"lan_interface": "lan0"}`)); err != nil || c.Gateway.Uplinks != nil {
		t.Errorf("gateway over every uplink: %+v, %v", c, err)
	}
	if c, _ := ParseConfig([]byte(validConfig)); c.Gateway != nil {
		t.Error("a gateway without the field")
	}
}

func TestGatewayConfigErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		name, gw, field, msg string
		edit                 func(string) string
	}{
		{"no lan", `{}`, "gateway.lan_interface", "interface name", nil},
		{"lan is an uplink", `{"lan_interface": "eth1"}`, "gateway.lan_interface", "uplinks[1]", nil},
		{"lan is the overlay", `{"lan_interface": "cw0"}`, "gateway.lan_interface", "overlay", nil},
		{"unknown uplink", `{"lan_interface": "lan0", "uplinks": [{"name": "wan3"}]}`, "gateway.uplinks[0].name", "not the name", nil},
		{"dup uplink", `{"lan_interface": "lan0", "uplinks": [{"name": "wan1"}, {"name": "wan1"}]}`, "gateway.uplinks[1].name", "also gateway.uplinks[0]", nil},
		{"bad via", `{"lan_interface": "lan0", "uplinks": [{"name": "wan1", "via": "fe80::1"}]}`, "gateway.uplinks[0].via", "IPv4", nil},
		{"unknown field", `{"lan_interface": "lan0", "nat": true}`, "nat", "unknown field", nil},
		{"no uplinks", `{"lan_interface": "lan0"}`, "gateway", "needs uplinks", func(s string) string {
			return strings.Replace(s, `"uplinks": [{"name": "wan1", "interface": "eth0"}, {"name": "wan2", "interface": "eth1", "addr": "198.18.5.2"}],`, "", 1)
		}},
		{"no lan prefix", `{"lan_interface": "lan0"}`, "gateway", "lan_prefixes", func(s string) string {
			return strings.Replace(s, `"lan_prefixes": ["10.10.0.0/24"],`, "", 1)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := string(gatewayConfig(tc.gw))
			if tc.edit != nil {
				if in2 := tc.edit(in); in2 == in {
					t.Fatal("test case: the edit does not apply")
				} else {
					in = in2
				}
			}
			_, err := ParseConfig([]byte(in))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("want *ConfigError, got %v", err)
			}
			for _, e := range ce.Errs {
				var fe *FieldError
				if errors.As(e, &fe) && fe.Field == tc.field && strings.Contains(fe.Msg, tc.msg) {
					return
				}
			}
			t.Errorf("no error for field %q containing %q in: %v", tc.field, tc.msg, err)
		})
	}
}

func TestGatewayFixed(t *testing.T) {
	on, err := ParseConfig(gatewayConfig(`{"lan_interface": "lan0"}`))
	if err != nil {
		t.Fatal(err)
	}
	off, _ := ParseConfig([]byte(validConfig))
	other, _ := ParseConfig(gatewayConfig(`{"lan_interface": "lan1"}`))
	lan := *on
	lan.LANPrefixes = []netip.Prefix{netip.MustParsePrefix("10.10.1.0/24")}
	for _, tc := range []struct {
		name     string
		old, new *Config
		field    string
	}{
		{"same", on, on, ""}, {"off", off, off, ""}, {"lan prefixes without gateway", off, &Config{LANPrefixes: lan.LANPrefixes}, ""},
		{"turned on", off, on, "gateway"}, {"turned off", on, off, "gateway"}, {"other lan", on, other, "gateway"},
		{"lan prefixes", on, &lan, "lan_prefixes"},
	} {
		errs := gatewayFixed(tc.old, tc.new)
		var got string
		if len(errs) > 0 {
			var fe *FieldError
			if errors.As(errs[0], &fe) {
				got = fe.Field
			}
		}
		if got != tc.field || len(errs) > 1 {
			t.Errorf("%s: %v, want one for %q", tc.name, errs, tc.field)
		}
	}
}

func TestUplinkHealth(t *testing.T) {
	path := func(uplink string, s probes.State) pathStatus {
		return pathStatus{Peer: "p", Uplink: uplink, Stats: probes.Stats{State: s}}
	}
	ups := []string{"wan1", "wan2", "wan3"}
	for _, tc := range []struct {
		name  string
		paths []pathStatus
		want  []string
	}{
		{"no paths (probing off)", nil, ups},
		{"one up path is enough", []pathStatus{path("wan1", probes.StateDown), path("wan1", probes.StateUp), path("wan2", probes.StateDown)}, []string{"wan1", "wan3"}},
		{"unknown is not up", []pathStatus{path("wan1", probes.StateUnknown), path("wan2", probes.StateUp), path("wan3", probes.StateUp)}, []string{"wan2", "wan3"}},
		{"all down", []pathStatus{path("wan1", probes.StateDown), path("wan2", probes.StateDown), path("wan3", probes.StateDown)}, []string{}},
	} {
		if got := uplinkHealth(ups, tc.paths); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
