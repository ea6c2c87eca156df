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

	"github.com/causeway-net/causeway/probes"
)

const (
	keyA = "kMi6x7cZ8lC8tOIB9F2p7mR3aAqgN8T1v5B0tX3m0Hs="
	keyB = "Yg1c8eM6m3lQm7nBkH0c1A5qv1m9B6yA3bq4Jd2r8Xk="
	// Probe key secrets (32 bytes in base64).
	probeSecret1 = "/CZUrh42Ce8avhAKQFv1t0TgUk+8kQmQ6W8mbRakdIo="
	probeSecret2 = "g+hJQvdy2TzEe1LjYKTGvEOgBPKFcOIuXElA/XaW6/I="
)

const validConfig = `{
  "name": "office-1",
  "state_dir": "/var/lib/causeway",
  "overlay_addr": "100.64.0.1",
  "lan_prefixes": ["10.10.0.0/24"],
  "uplinks": [{"name": "wan1", "interface": "eth0"}, {"name": "wan2", "interface": "eth1", "addr": "198.18.5.2"}],
  "probe_key": {"id": 7, "secret": "` + probeSecret1 + `"},
  "probe_accepted_keys": [{"id": 8, "secret": "` + probeSecret2 + `"}],
  "probe_interval": "100ms",
  "sla": {"max_loss_percent": 2, "max_rtt": "150ms", "max_jitter": "30ms"},
  "peers": [
    {"name": "vpc-1", "site": "st_vpc", "public_key": "` + keyA + `", "overlay_addr": "100.64.0.2",
     "endpoints": ["198.18.2.2:51820"], "prefixes": ["10.20.0.0/24"], "keepalive": "25s",
     "sla": {"max_loss_percent": 0.5}},
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
	if c.ProbeKey.ID() != 7 || c.ProbeKey.IsZero() || len(c.ProbeAccepted) != 1 || c.ProbeAccepted[0].ID() != 8 ||
		c.ProbeInterval != 100*time.Millisecond {
		t.Errorf("probe settings: %v %v %v", c.ProbeKey, c.ProbeAccepted, c.ProbeInterval)
	}
	if want := (probes.SLA{MaxLossPercent: 2, MaxRTT: 150 * time.Millisecond, MaxJitter: 30 * time.Millisecond}); c.SLA != want || c.PathSLA(c.Peers[1]) != want {
		t.Errorf("sla: %+v", c.SLA)
	}
	if got := c.PathSLA(c.Peers[0]); got != (probes.SLA{MaxLossPercent: 0.5}) {
		t.Errorf("peers[0] sla (an override, not merged): %+v", got)
	}
	if c.Peers[0].MeterSite() != "st_vpc" || c.Peers[1].MeterSite() != "home-1" {
		t.Errorf("metered sites %q, %q: want the site id, else the peer's name", c.Peers[0].MeterSite(), c.Peers[1].MeterSite())
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
		{"site", `"st_vpc"`, `"st vpc"`, "peers[0].site", "site id"},
		{"keepalive fraction", `"25s"`, `"1.5s"`, "peers[0].keepalive", "whole seconds"},
		{"dup peer name", `"name": "home-1"`, `"name": "vpc-1"`, "peers[1].name", "also the name of peers[0]"},
		{"unknown field", `"name": "office-1",`, `"name": "office-1", "listen": 1,`, "listen", "unknown field"},
		{"uplink name", `"name": "wan1"`, `"name": "WAN"`, "uplinks[0].name", "lower-case"},
		{"uplink dup", `"name": "wan2"`, `"name": "wan1"`, "uplinks[1].name", "also the name of uplinks[0]"},
		{"uplink iface", `"interface": "eth0"`, `"interface": "a-very-long-interface"`, "uplinks[0].interface", "1-15"},
		{"uplink addr", `"198.18.5.2"`, `"2001:db8::1"`, "uplinks[1].addr", "IPv4"},
		{"wrong type", `"name": "office-1",`, `"name": "office-1", "mtu": "big",`, "mtu", "want int"},
		{"probe key secret", probeSecret1, "abc", "probe_key.secret", "44 base64"},
		{"probe key zero", probeSecret1, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "probe_key.secret", "all-zero"},
		{"probe key id missing", `{"id": 7, "secret"`, `{"secret"`, "probe_key.id", "required"},
		{"probe key id range", `{"id": 7,`, `{"id": -1,`, "probe_key.id", "want uint32"},
		{"probe key dup id", `{"id": 8,`, `{"id": 7,`, "probe_accepted_keys[0].id", "also the id of probe_key"},
		{"probe keys too many", `"probe_accepted_keys": [`, `"probe_accepted_keys": [{"id": 9, "secret": "` + probeSecret1 + `"}, {"id": 10, "secret": "` + probeSecret1 + `"}, `, "probe_accepted_keys", "at most 2"},
		{"accepted without current", `"probe_key": {"id": 7, "secret": "` + probeSecret1 + `"},`, ``, "probe_accepted_keys", "needs a probe_key"},
		{"probe interval", `"100ms"`, `"100"`, "probe_interval", "duration"},
		{"probe interval range", `"100ms"`, `"1ms"`, "probe_interval", "10ms to 1m0s"},
		{"sla loss", `"max_loss_percent": 2,`, `"max_loss_percent": 101,`, "sla.max_loss_percent", "0 to 100"},
		{"sla rtt", `"150ms"`, `"-1ms"`, "sla.max_rtt", "0 to 1m0s"},
		{"sla jitter", `"30ms"`, `"fast"`, "sla.max_jitter", "duration"},
		{"peer sla", `{"max_loss_percent": 0.5}`, `{"max_loss_percent": -1}`, "peers[0].sla.max_loss_percent", "0 to 100"},
		{"sla unknown field", `{"max_loss_percent": 0.5}`, `{"max_loss": 1}`, "max_loss", "unknown field"},
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
	f.Add([]byte(`{"name":"a","state_dir":"/s","overlay_addr":"100.64.0.9","probe_key":{"id":1,"secret":"` + probeSecret1 + `"},"sla":{"max_rtt":"1.5s"},"peers":[{"name":"b","public_key":"` + keyA + `","overlay_addr":"100.64.0.8","sla":{}}]}`))
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
