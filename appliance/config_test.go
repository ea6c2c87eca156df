package appliance

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

const (
	keyA = "kMi6x7cZ8lC8tOIB9F2p7mR3aAqgN8T1v5B0tX3m0Hs="
	keyB = "Yg1c8eM6m3lQm7nBkH0c1A5qv1m9B6yA3bq4Jd2r8Xk="
)

const validConfig = `{
  "name": "office-1",
  "state_dir": "/var/lib/causeway",
  "overlay_addr": "100.64.0.1",
  "lan_prefixes": ["10.10.0.0/24"],
  "uplinks": [{"name": "wan1", "interface": "eth0"}, {"name": "wan2", "interface": "eth1", "addr": "198.18.5.2"}],
  "peers": [
    {"name": "vpc-1", "public_key": "` + keyA + `", "overlay_addr": "100.64.0.2",
     "endpoints": ["198.18.2.2:51820"], "prefixes": ["10.20.0.0/24"], "keepalive": "25s"},
    {"name": "home-1", "public_key": "` + keyB + `", "overlay_addr": "100.64.0.3",
     "prefixes": ["10.30.0.0/24"]}
  ]
}`

func TestParseConfigValid(t *testing.T) {
	c, err := ParseConfig([]byte(validConfig))
	if err != nil {
		t.Fatal(err)
	}
	if c.Interface != DefaultInterface || c.ListenPort != DefaultListenPort || c.HTTPListen != DefaultHTTPListen {
		t.Errorf("defaults not applied: %+v", c)
	}
	if len(c.Uplinks) != 2 || c.Uplinks[1].Addr.String() != "198.18.5.2" || c.Uplinks[0].Interface != "eth0" {
		t.Errorf("uplinks: %+v", c.Uplinks)
	}
	if len(c.Peers) != 2 || c.Peers[0].Keepalive != 25*time.Second || len(c.Peers[1].Endpoints) != 0 {
		t.Errorf("peers: %+v", c.Peers)
	}
	got := c.Peers[0].AllowedPrefixes()
	if len(got) != 2 || got[0].String() != "100.64.0.2/32" || got[1].String() != "10.20.0.0/24" {
		t.Errorf("AllowedPrefixes = %v", got)
	}
}

func TestConfigRoundTrip(t *testing.T) {
	c, err := ParseConfig([]byte(validConfig))
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	c2, err := ParseConfig(b)
	if err != nil {
		t.Fatalf("re-parsing %s: %v", b, err)
	}
	if !reflect.DeepEqual(c, c2) {
		t.Errorf("round trip changed the config:\n%+v\n%+v", c, c2)
	}
}

// edit applies a string replacement to validConfig; it fails the test if
// the replacement does not apply, so a stale case cannot pass silently.
func edit(t *testing.T, old, new string) []byte {
	t.Helper()
	if !strings.Contains(validConfig, old) {
		t.Fatalf("test case: %q not in the base config", old)
	}
	return []byte(strings.Replace(validConfig, old, new, 1))
}

func TestParseConfigErrorsNameTheField(t *testing.T) {
	cases := []struct {
		name, old, new, field, msg string
	}{
		{"bad name", `"office-1"`, `"Office 1"`, "name", "lower-case"},
		{"relative state dir", `"/var/lib/causeway"`, `"state"`, "state_dir", "absolute"},
		{"missing state dir", `"state_dir": "/var/lib/causeway",`, ``, "state_dir", "required"},
		{"overlay outside range", `"overlay_addr": "100.64.0.1"`, `"overlay_addr": "10.0.0.1"`, "overlay_addr", "outside the overlay range"},
		{"port range", `"name": "office-1",`, `"name": "office-1", "listen_port": 70000,`, "listen_port", "1-65535"},
		{"mtu range", `"name": "office-1",`, `"name": "office-1", "mtu": 500,`, "mtu", "1280-9000"},
		{"host bits", `"10.10.0.0/24"`, `"10.10.0.5/24"`, "lan_prefixes[0]", "did you mean 10.10.0.0/24"},
		{"lan in overlay", `"10.10.0.0/24"`, `"100.64.1.0/24"`, "lan_prefixes[0]", "overlaps the overlay range"},
		{"bad key", keyA, "abc", "peers[0].public_key", "44 base64"},
		{"dup key", keyB, keyA, "peers[1].public_key", "same key as peers[0]"},
		{"dup overlay", `"overlay_addr": "100.64.0.3"`, `"overlay_addr": "100.64.0.1"`, "peers[1].overlay_addr", "already used"},
		{"bad endpoint", `"198.18.2.2:51820"`, `"198.18.2.2"`, "peers[0].endpoints[0]", "IP:port"},
		{"zero port", `"198.18.2.2:51820"`, `"198.18.2.2:0"`, "peers[0].endpoints[0]", "port 0"},
		{"overlapping prefixes", `"10.30.0.0/24"`, `"10.20.0.0/16"`, "peers[1].prefixes[0]", "overlaps 10.20.0.0/24 (peers[0].prefixes[0])"},
		{"keepalive", `"25s"`, `"25"`, "peers[0].keepalive", "duration"},
		{"keepalive fraction", `"25s"`, `"1.5s"`, "peers[0].keepalive", "whole seconds"},
		{"dup peer name", `"name": "home-1"`, `"name": "vpc-1"`, "peers[1].name", "also the name of peers[0]"},
		{"unknown field", `"name": "office-1",`, `"name": "office-1", "listen": 1,`, "listen", "unknown field"},
		{"uplink name", `"name": "wan1"`, `"name": "WAN"`, "uplinks[0].name", "lower-case"},
		{"uplink dup", `"name": "wan2"`, `"name": "wan1"`, "uplinks[1].name", "also the name of uplinks[0]"},
		{"uplink iface", `"interface": "eth0"`, `"interface": "a-very-long-interface"`, "uplinks[0].interface", "1-15"},
		{"uplink addr", `"198.18.5.2"`, `"2001:db8::1"`, "uplinks[1].addr", "IPv4"},
		{"wrong type", `"name": "office-1",`, `"name": "office-1", "mtu": "big",`, "mtu", "want int"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig(edit(t, tc.old, tc.new))
			var ce *ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("want *ConfigError, got %v", err)
			}
			var fe *FieldError
			for _, e := range ce.Errs {
				if errors.As(e, &fe) && fe.Field == tc.field && strings.Contains(fe.Msg, tc.msg) {
					return
				}
			}
			t.Errorf("no error for field %q containing %q in: %v", tc.field, tc.msg, err)
		})
	}
}

func TestParseConfigSyntaxErrorHasPosition(t *testing.T) {
	_, err := ParseConfig([]byte("{\n  \"name\": \"x\",\n  oops\n}"))
	if err == nil || !strings.Contains(err.Error(), "line 3") {
		t.Fatalf("want an error naming line 3, got %v", err)
	}
	for _, in := range []string{"", "{", `{"name":"x"} {}`, "[]"} {
		if _, err := ParseConfig([]byte(in)); err == nil {
			t.Errorf("ParseConfig(%q) succeeded", in)
		}
	}
}

func TestParseConfigReportsEveryProblem(t *testing.T) {
	_, err := ParseConfig([]byte(`{"name": "X", "overlay_addr": "1.2.3.4", "lan_prefixes": ["bad"]}`))
	var ce *ConfigError
	if !errors.As(err, &ce) || len(ce.Errs) < 4 {
		t.Fatalf("want at least 4 problems (name, state_dir, overlay_addr, lan_prefixes[0]), got %v", err)
	}
}

func TestLoadConfigNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.json")
	if err := os.WriteFile(path, []byte(`{"name": 5}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadConfig(path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "name") {
		t.Fatalf("got %v", err)
	}
	if _, err := LoadConfig(filepath.Join(t.TempDir(), "missing.json")); err == nil {
		t.Fatal("missing file accepted")
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(validConfig))
	f.Add([]byte(`{"name":"a","state_dir":"/s","overlay_addr":"100.64.0.9","peers":[{"name":"b","public_key":"` + keyA + `","overlay_addr":"100.64.0.8","endpoints":["[2001:db8::1]:1"]}]}`))
	f.Add([]byte(`{"lan_prefixes":["10.0.0.0/8","10.1.0.0/16"]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			var ce *ConfigError
			if !errors.As(err, &ce) || len(ce.Errs) == 0 {
				t.Fatalf("error is not a non-empty *ConfigError: %v", err)
			}
			return
		}
		// Whatever parses must survive a round trip unchanged.
		b, err := json.Marshal(c)
		if err != nil {
			t.Fatal(err)
		}
		c2, err := ParseConfig(b)
		if err != nil {
			t.Fatalf("re-parse of %s: %v", b, err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip changed the config")
		}
	})
}
