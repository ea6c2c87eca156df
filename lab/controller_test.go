package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/appliance"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// pushBudget is how long a change made through the API may take to reach
// every running appliance.
const pushBudget = time.Second

// appliedLine is an appliance's "netmap applied" log line.
type appliedLine struct {
	Time      time.Time `json:"time"`
	Msg       string    `json:"msg"`
	Version   uint64    `json:"version"`
	RequestID string    `json:"request_id"`
	Peers     int       `json:"peers"`
}

// logLines returns the JSON log lines of the named appliance with message
// msg.
func logLines(l *Lab, name, msg string) []appliedLine {
	b, _ := os.ReadFile(l.LogPath(name))
	var out []appliedLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var ln appliedLine
		if json.Unmarshal(sc.Bytes(), &ln) == nil && ln.Msg == msg {
			out = append(out, ln)
		}
	}
	return out
}

// waitApplied waits until the named appliance logs that it applied a
// netmap carrying the API request id reqID, and returns that line.
func waitApplied(ctx context.Context, l *Lab, name, reqID string) (appliedLine, error) {
	for {
		for _, ln := range logLines(l, name, "netmap applied") {
			if ln.RequestID == reqID {
				return ln, nil
			}
		}
		select {
		case <-ctx.Done():
			return appliedLine{}, fmt.Errorf("%s logged no \"netmap applied\" with request_id %s: %w", name, reqID, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// peerSeries returns the peers that the appliance's /metrics has
// causeway_peer_* series for.
func peerSeries(ctx context.Context, l *Lab, name string) (map[string]bool, error) {
	body, err := fetch(ctx, l, name, "http://"+appliance.DefaultHTTPListen+"/metrics")
	if err != nil {
		return nil, err
	}
	peers := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		if !strings.HasPrefix(line, "causeway_peer_") {
			continue
		}
		if _, rest, ok := strings.Cut(line, `peer="`); ok {
			if p, _, ok := strings.Cut(rest, `"`); ok {
				peers[p] = true
			}
		}
	}
	return peers, nil
}

// waitPeerSeries waits until the appliance's metrics do (present) or do
// not list peer, and returns when that was seen.
func waitPeerSeries(ctx context.Context, l *Lab, name, peer string, present bool) (time.Time, error) {
	for {
		ps, err := peerSeries(ctx, l, name)
		if err == nil && ps[peer] == present {
			return time.Now(), nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("%s: peer %s in metrics never became %v (last error %v): %w", name, peer, present, err, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// enroll posts an enrollment for a simulated appliance, which has a key
// and an endpoint but no process: enough for the real appliances to list
// it as a peer.
func enroll(ctx context.Context, l *Lab, token, name string, key wgkey.PublicKey, endpoint, reqID string) (int, string, error) {
	hc, err := l.ControllerClient()
	if err != nil {
		return 0, "", err
	}
	b, _ := json.Marshal(map[string]any{"token": token, "name": name, "public_key": key.String(), "endpoints": []string{endpoint}})
	req, err := http.NewRequestWithContext(WithRequestID(ctx, reqID), http.MethodPost, l.ControllerURL()+"/api/v1/enroll", bytes.NewReader(b))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), nil
}

// newSite creates a site through the API and returns an enrollment token
// for it.
func newSite(ctx context.Context, t *testing.T, l *Lab, site, prefix string) string {
	t.Helper()
	var v struct {
		Token string `json:"token"`
	}
	if err := l.ctlJSON(ctx, &v, "site", "create", l.Tenant(), site, "--kind", "remote", "--prefix", prefix); err != nil {
		t.Fatal(err)
	}
	if err := l.ctlJSON(ctx, &v, "token", "create", l.Tenant(), "--site", site); err != nil {
		t.Fatal(err)
	}
	return v.Token
}

func testKey(t *testing.T) wgkey.PublicKey {
	t.Helper()
	k, err := appliance.LoadOrCreateKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return k.Public()
}

// TestController drives the controller-managed lab: enrollment, pushes,
// revocation, and fail-static operation with the controller gone. The
// subtests build on each other and run in order.
func TestController(t *testing.T) {
	t.Parallel()
	l := upLab(t, "ctl", os.Getpid())
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	url := "http://" + backendAddr.String() + "/"
	names := []string{memberA, memberB, "vpc-1", "home-1"}

	t.Run("every-site-enrolled", func(t *testing.T) {
		var apps struct {
			Items []struct {
				Name, State string
				OverlayAddr string `json:"overlay_addr"`
				PublicKey   string `json:"public_key"`
				SiteIDJSON  string `json:"site_id"`
			} `json:"items"`
		}
		if err := l.ctlJSON(ctx, &apps, "appliance", "list", l.Tenant()); err != nil {
			t.Fatal(err)
		}
		var sites struct {
			Items []struct{ ID, Name string } `json:"items"`
		}
		if err := l.ctlJSON(ctx, &sites, "site", "list", l.Tenant()); err != nil {
			t.Fatal(err)
		}
		siteName := map[string]string{}
		for _, s := range sites.Items {
			siteName[s.ID] = s.Name
		}
		keys := map[string]wgkey.PublicKey{}
		for _, a := range l.t.appliances {
			k, err := appliance.LoadOrCreateKey(l.applianceDir(a.name))
			if err != nil {
				t.Fatal(err)
			}
			keys[a.name] = k.Public()
		}
		if len(apps.Items) != len(names) {
			t.Fatalf("the controller has %d appliances, want %d: %+v", len(apps.Items), len(names), apps.Items)
		}
		for _, a := range apps.Items {
			if a.State != "active" || l.t.appliance(a.Name) == nil || siteName[a.SiteIDJSON] != l.t.appliance(a.Name).site ||
				a.PublicKey != keys[a.Name].String() {
				t.Errorf("appliance %+v (site %q, key on the device %s)", a, siteName[a.SiteIDJSON], keys[a.Name])
			}
		}
		st := l.Status()
		for _, a := range l.t.appliances {
			nm, err := appliance.LoadNetmap(l.applianceDir(a.name))
			if err != nil || nm == nil {
				t.Fatalf("%s: saved netmap: %v", a.name, err)
			}
			if i := slices.IndexFunc(st.Appliances, func(s ApplianceStatus) bool { return s.Name == a.name }); st.Appliances[i].OverlayAddr != nm.OverlayAddr.String() {
				t.Errorf("%s: status overlay %q, netmap %s", a.name, st.Appliances[i].OverlayAddr, nm.OverlayAddr)
			}
			var peers []string
			for _, p := range nm.Peers {
				peers = append(peers, p.Name)
				o := l.t.appliance(p.Name)
				if o == nil {
					t.Errorf("%s: unknown peer %s", a.name, p.Name)
					continue
				}
				wantEP := l.t.endpoints(o)
				if p.PublicKey != keys[o.name] || !slices.Equal(p.Prefixes, o.lan) || !slices.Equal(p.Endpoints, wantEP) {
					t.Errorf("%s: peer %+v; want key %s, prefixes %v, endpoints %v", a.name, p, keys[o.name], o.lan, wantEP)
				}
				// Behind NAT, the appliance keeps its mappings open.
				if (p.Keepalive != 0) != a.natted {
					t.Errorf("%s: keepalive %v toward %s", a.name, p.Keepalive, p.Name)
				}
			}
			if want := slices.DeleteFunc(slices.Clone(names), func(n string) bool { return n == a.name }); !sameSet(peers, want) {
				t.Errorf("%s: peers %v, want %v", a.name, peers, want)
			}
		}
		if cfg := l.ApplianceConfig("home-1"); cfg == nil || len(cfg.Peers) != 3 || len(cfg.Uplinks) != 1 {
			t.Errorf("ApplianceConfig(home-1) = %+v", cfg)
		}
	})

	t.Run("push-new-appliance", func(t *testing.T) {
		token := newSite(ctx, t, l, "branch-1", "10.40.0.0/24")
		reqID := "lab-push-" + l.Instance()
		start := time.Now()
		code, body, err := enroll(ctx, l, token, "branch-1", testKey(t), "198.18.9.2:51820", reqID)
		if err != nil || code != http.StatusCreated {
			t.Fatalf("enrolling branch-1: %d %s %v", code, body, err)
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for _, n := range names {
			ln, err := waitApplied(wctx, l, n, reqID)
			if err != nil {
				t.Error(err)
				continue
			}
			d := ln.Time.Sub(start)
			t.Logf("%s applied netmap %d (request %s, %d peers) %v after the API call", n, ln.Version, reqID, ln.Peers, d.Round(100*time.Microsecond))
			if d > pushBudget || ln.Peers != 4 {
				t.Errorf("%s: applied %d peers after %v; want 4 within %v", n, ln.Peers, d, pushBudget)
			}
			if _, err := waitPeerSeries(wctx, l, n, "branch-1", true); err != nil {
				t.Error(err)
			}
		}

		// A token is good for one enrollment only.
		code, body, err = enroll(ctx, l, token, "branch-1b", testKey(t), "198.18.9.3:51820", "")
		if err != nil || code != http.StatusConflict || !strings.Contains(body, "token-used") {
			t.Errorf("reusing an enrollment token: %d %s %v; want 409 token-used", code, body, err)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		reqID := "lab-revoke-" + l.Instance()
		start := time.Now()
		if _, err := l.Ctl(WithRequestID(ctx, reqID), "appliance", "revoke", l.Tenant(), "branch-1"); err != nil {
			t.Fatal(err)
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		for _, n := range names {
			gone, err := waitPeerSeries(wctx, l, n, "branch-1", false)
			if err != nil {
				t.Error(err)
				continue
			}
			ln, err := waitApplied(wctx, l, n, reqID)
			if err != nil {
				t.Error(err)
				continue
			}
			d := gone.Sub(start)
			t.Logf("%s: branch-1 gone from its WireGuard peers %v after the API call (netmap %d applied after %v)",
				n, d.Round(100*time.Microsecond), ln.Version, ln.Time.Sub(start).Round(100*time.Microsecond))
			if d > pushBudget {
				t.Errorf("%s: revoked peer still configured after %v", n, d)
			}
		}
	})

	t.Run("controller-killed-traffic-goes-on", func(t *testing.T) {
		if err := l.KillController(); err != nil {
			t.Fatal(err)
		}
		if pid := l.Status().Controller.PID; pid != 0 {
			t.Fatalf("controller killed, but status has pid %d", pid)
		}
		// New connections, new flows, for three seconds.
		deadline := time.Now().Add(3 * time.Second)
		n := 0
		for time.Now().Before(deadline) {
			for _, host := range []string{"office-1-host", "home-1-host"} {
				fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
				_, err := fetch(fctx, l, host, url)
				cancel()
				if err != nil {
					t.Fatalf("%s, with the controller down (%d fetches done): %v", host, n, err)
				}
				n++
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%d fetches through the overlay over 3 s with the controller killed", n)
		for _, name := range names {
			if len(logLines(l, name, "sync failed; the overlay keeps running on the last netmap")) == 0 {
				t.Errorf("%s logged no failed sync", name)
			}
		}
	})

	t.Run("appliance-restart-without-controller", func(t *testing.T) {
		if err := l.StopAppliance(memberA); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := l.StartAppliance(ctx, memberA); err != nil {
			t.Fatal(err)
		}
		if len(logLines(l, memberA, "starting from the saved netmap")) == 0 {
			t.Errorf("%s did not start from its saved netmap", memberA)
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		if err := l.waitReachable(wctx, "office-1-host", l.t.services[0]); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s restarted without the controller; office-1-host reached the backend %v after the start",
			memberA, time.Since(start).Round(time.Millisecond))
		if cfg := l.ApplianceConfig(memberA); cfg == nil || len(cfg.Peers) != 3 {
			t.Errorf("%s runs with %+v", memberA, cfg)
		}
	})

	t.Run("controller-back", func(t *testing.T) {
		if err := l.StartController(ctx); err != nil {
			t.Fatal(err)
		}
		back := time.Now()
		// The pair's members report what happened while it was away (the
		// restart above moved the role twice); once the controller holds
		// office-1a active again, the change below is the last one.
		wctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		defer cancel()
		if err := l.waitPairs(wctx); err != nil {
			t.Fatal(err)
		}
		token := newSite(ctx, t, l, "branch-2", "10.41.0.0/24")
		reqID := "lab-back-" + l.Instance()
		start := time.Now()
		code, body, err := enroll(ctx, l, token, "branch-2", testKey(t), "198.18.9.4:51820", reqID)
		if err != nil || code != http.StatusCreated {
			t.Fatalf("enrolling branch-2: %d %s %v", code, body, err)
		}
		// The appliances retry with backoff while the controller is away
		// (at most 30 s between attempts; here a few seconds).
		for _, n := range names {
			ln, err := waitApplied(wctx, l, n, reqID)
			if err != nil {
				t.Error(err)
				continue
			}
			t.Logf("%s applied netmap %d %v after the API call, %v after the controller came back",
				n, ln.Version, ln.Time.Sub(start).Round(time.Millisecond), ln.Time.Sub(back).Round(time.Millisecond))
			if ln.Peers != 4 {
				t.Errorf("%s: %d peers, want 4", n, ln.Peers)
			}
		}
		if _, err := fetch(ctx, l, "office-1-host", url); err != nil {
			t.Error(err)
		}
	})
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
