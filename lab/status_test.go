package lab

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/appliance"
)

// The golden file is the documented JSON shape of `causeway lab status
// --json`; refresh it with CAUSEWAY_UPDATE_GOLDEN=1 go test ./lab/ and
// review the diff: scripts depend on it.
const statusGolden = "testdata/status.golden.json"

// testFingerprint stands in for the CA fingerprint of a real controller.
const testFingerprint = "8f3b0c6e2a1d4f5b9c7e0a2b4d6f8a1c3e5b7d9f0a2c4e6b8d0f1a3c5e7b9d0f"

func testStatus() Status {
	pids := map[string]int{"office-1a": 101, "office-1b": 103, "vpc-1": 102, "backend-http": 201, "web-http": 202, "controller": 200}
	overlay := map[string]string{"office-1a": "100.64.0.1", "office-1b": "100.64.0.2", "vpc-1": "100.64.0.3", "home-1": "100.64.0.4"}
	t0 := time.Date(2026, 1, 1, 10, 0, 0, 0, time.UTC)
	pairs := map[string]*appliance.PairView{
		"office-1a": {Name: "office-1a", Role: "active", Active: "office-1a", Since: t0, Term: 1,
			Failover: &appliance.FailoverView{At: t0, To: "office-1a", Reason: "startup"}},
		"office-1b": {Name: "office-1b", Role: "standby", Active: "office-1a", Since: t0, Term: 1},
	}
	return buildStatus(labTopology, "demo", "/run/causeway-lab/demo", liveState{
		pid:           func(name string) int { return pids[name] },
		overlay:       func(name string) string { return overlay[name] },
		pair:          func(name string) *appliance.PairView { return pairs[name] },
		caFingerprint: testFingerprint,
	})
}

func TestStatusJSON(t *testing.T) {
	got, err := json.MarshalIndent(testStatus(), "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, '\n')
	if os.Getenv("CAUSEWAY_UPDATE_GOLDEN") == "1" {
		if err := os.MkdirAll(filepath.Dir(statusGolden), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(statusGolden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(statusGolden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("status JSON differs from %s (CAUSEWAY_UPDATE_GOLDEN=1 to refresh):\n%s", statusGolden, got)
	}
}

// TestStatusShape decodes the JSON the way a script would, field by the
// names docs/lab.md gives.
func TestStatusShape(t *testing.T) {
	b, _ := json.Marshal(testStatus())
	var s struct {
		Instance string `json:"instance"`
		Hosts    []struct {
			Name, Site, Netns string
			Addrs             []string
		} `json:"hosts"`
		Appliances []struct {
			Name, Site, Netns string
			PID               int `json:"pid"`
			Uplinks           []struct{ Name, Addr string }
			OverlayAddr       string `json:"overlay_addr"`
			Pair              *struct {
				Role   string `json:"role"`
				Active bool   `json:"active"`
				Term   uint64 `json:"term"`
				Since  string `json:"since"`
			} `json:"pair"`
		} `json:"appliances"`
		Services []struct {
			Name, Host, URL string
			UDPEcho         string `json:"udp_echo"`
		} `json:"services"`
		Controller struct {
			URL           string `json:"url"`
			Netns         string `json:"netns"`
			PID           int    `json:"pid"`
			CAFingerprint string `json:"ca_fingerprint"`
			Tenant        string `json:"tenant"`
		} `json:"controller"`
		Pairs []struct {
			Site         string   `json:"site"`
			Active       string   `json:"active"`
			Members      []string `json:"members"`
			Since        string   `json:"since"`
			LastFailover *struct {
				At, From, To, Reason string
			} `json:"last_failover"`
		} `json:"pairs"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	if s.Instance != "demo" || len(s.Hosts) != 4 || len(s.Appliances) != 4 || len(s.Services) != 2 || len(s.Pairs) != 1 {
		t.Fatalf("unexpected status: %s", b)
	}
	h := s.Hosts[0]
	if h.Name != "office-1-host" || h.Site != "office-1" || h.Netns != "cw-demo-office-1-host" || len(h.Addrs) != 1 || h.Addrs[0] != "10.10.0.10" {
		t.Errorf("host %+v", h)
	}
	a := s.Appliances[0]
	if a.Name != "office-1a" || a.Netns != "cw-demo-office-1a" || a.PID != 101 || a.OverlayAddr != "100.64.0.1" ||
		len(a.Uplinks) != 1 || a.Uplinks[0].Name != "wan1" || a.Uplinks[0].Addr != "198.18.1.2" ||
		a.Pair == nil || a.Pair.Role != "active" || !a.Pair.Active || a.Pair.Term != 1 || a.Pair.Since != "2026-01-01T10:00:00Z" {
		t.Errorf("appliance %+v, pair %+v", a, a.Pair)
	}
	if b := s.Appliances[1]; b.Name != "office-1b" || len(b.Uplinks) != 1 || b.Uplinks[0].Name != "wan2" || b.Uplinks[0].Addr != "198.18.4.2" ||
		b.Pair == nil || b.Pair.Role != "standby" || b.Pair.Active {
		t.Errorf("appliance %+v, pair %+v", b, b.Pair)
	}
	if s.Appliances[3].PID != 0 || s.Appliances[3].Pair != nil {
		t.Errorf("a stopped appliance has pid %d, or a single one a pair: %+v", s.Appliances[3].PID, s.Appliances[3].Pair)
	}
	if p := s.Pairs[0]; p.Site != "office-1" || p.Active != "office-1a" || len(p.Members) != 2 || p.Since != "2026-01-01T10:00:00Z" ||
		p.LastFailover == nil || p.LastFailover.To != "office-1a" || p.LastFailover.Reason != "startup" {
		t.Errorf("pair %+v", p)
	}
	sv := s.Services[0]
	if sv.Name != "backend-http" || sv.Host != "vpc-1-backend-1" || sv.URL != "http://10.20.0.10/" {
		t.Errorf("service %+v", sv)
	}
	if sv := s.Services[1]; sv.Name != "web-http" || sv.Host != "web-1" || sv.URL != "http://198.19.0.10/" || sv.UDPEcho != "198.19.0.10:7" {
		t.Errorf("service %+v", sv)
	}
	if c := s.Controller; c.URL != "https://198.18.0.2:8443" || c.Netns != "cw-demo-cloud" || c.PID != 200 ||
		c.CAFingerprint != testFingerprint || c.Tenant != "demo" {
		t.Errorf("controller %+v", c)
	}
	for _, field := range []string{`"addrs"`, `"uplinks"`, `"overlay_addr"`, `"url"`, `"ca_fingerprint"`, `"pairs"`, `"pair"`, `"last_failover"`} {
		if !bytes.Contains(b, []byte(field)) {
			t.Errorf("JSON lacks %s", field)
		}
	}
}

func TestStatusText(t *testing.T) {
	var b strings.Builder
	if err := testStatus().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"office-1a  office-1  cw-demo-office-1a  101",
		"home-1     home-1    cw-demo-home-1     stopped  100.64.0.4  wan0=172.16.30.2",
		"office-1  office-1a  office-1a,office-1b  2026-01-01T10:00:00Z  2026-01-01T10:00:00Z - -> office-1a (startup)",
		"vpc-1-backend-1  vpc-1     cw-demo-vpc-1-backend-1  10.20.0.10",
		"backend-http  vpc-1-backend-1  http://10.20.0.10/   -              201",
		"web-http      web-1            http://198.19.0.10/  198.19.0.10:7  202",
		"Internet hosts: web-1",
		"Routers and switches: inet, office-1-lan",
		"https://198.18.0.2:8443  cw-demo-cloud  200  demo    " + testFingerprint,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status text lacks %q:\n%s", want, out)
		}
	}
}
