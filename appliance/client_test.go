package appliance

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/causeway-net/causeway/controller"
	"github.com/causeway-net/causeway/controller/ctl"
	"github.com/causeway-net/causeway/controller/netmap"
	"github.com/causeway-net/causeway/dataplane/wgkey"
)

// controllerEnv is a real controller (SQLite, its own CA) on 127.0.0.1.
type controllerEnv struct {
	srv *controller.Server
	cfg ctl.Config
}

func startController(t *testing.T) *controllerEnv {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := controller.New(ctx, controller.Options{Listen: "127.0.0.1:0", DataDir: dir, TLSHosts: []string{"127.0.0.1"}})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	tok, err := os.ReadFile(filepath.Join(dir, controller.OperatorTokenFile))
	if err != nil {
		t.Fatal(err)
	}
	return &controllerEnv{srv: srv, cfg: ctl.Config{Server: srv.URL(), Token: strings.TrimSpace(string(tok)), CAFile: filepath.Join(dir, controller.CAFile)}}
}

func (e *controllerEnv) ctl(t *testing.T, args ...string) string {
	t.Helper()
	var out bytes.Buffer
	cfg := e.cfg
	cfg.Out = &out
	if err := ctl.Run(context.Background(), cfg, args); err != nil {
		t.Fatalf("ctl %s: %v", strings.Join(args, " "), err)
	}
	return out.String()
}

func (e *controllerEnv) token(t *testing.T, tenant, site string) string {
	var et struct{ Token string }
	json.Unmarshal([]byte(e.ctl(t, "token", "create", tenant, "--site", site, "--ttl", "5m")), &et)
	if et.Token == "" {
		t.Fatal("no enrollment token")
	}
	return et.Token
}

func TestClientEnrollAndSync(t *testing.T) {
	e := startController(t)
	e.ctl(t, "tenant", "create", "acme")
	e.ctl(t, "site", "create", "acme", "office-1", "--kind", "office", "--prefix", "10.10.0.0/24")
	e.ctl(t, "site", "create", "acme", "vpc-1", "--kind", "vpc", "--prefix", "10.20.0.0/24")
	ctx := context.Background()

	// A client that pins another CA is refused before anything is sent.
	wrong, err := NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: strings.Repeat("ab", 32)})
	if err != nil {
		t.Fatal(err)
	}
	k1, _ := wgkey.NewPrivate()
	if _, _, err := wrong.Enroll(ctx, EnrollRequest{Token: "x", PublicKey: k1.Public()}); err == nil || !strings.Contains(err.Error(), "pinned CA") {
		t.Fatalf("wrong pin: %v", err)
	}

	c1, err := NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: e.srv.CAFingerprint()})
	if err != nil {
		t.Fatal(err)
	}
	tok := e.token(t, "acme", "office-1")
	enr, nm, err := c1.Enroll(ctx, EnrollRequest{Token: tok, Name: "office-1", PublicKey: k1.Public(),
		Endpoints: []netip.AddrPort{netip.MustParseAddrPort("198.18.1.2:51820")}})
	if err != nil {
		t.Fatal(err)
	}
	if enr.Credential == "" || nm.Name != "office-1" || !nm.OverlayAddr.IsValid() || len(nm.Peers) != 0 {
		t.Fatalf("enrollment %+v, netmap %+v", enr, nm)
	}
	// The same token again is refused for good (no retry would help).
	_, _, err = c1.Enroll(ctx, EnrollRequest{Token: tok, PublicKey: k1.Public()})
	var ae *APIError
	if !errors.As(err, &ae) || !ae.Permanent() {
		t.Fatalf("reused token: %v", err)
	}

	// Nothing new: the long-poll ends empty.
	sync1, _ := NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: e.srv.CAFingerprint(), Credential: enr.Credential})
	if got, err := sync1.Sync(ctx, nm, 200*time.Millisecond); err != nil || got != nil {
		t.Fatalf("idle sync: %v %v", got, err)
	}
	// A second appliance enrolling is pushed to the first while it waits.
	type result struct {
		nm  any
		err error
		at  time.Time
	}
	waiting := make(chan result, 1)
	go func() {
		got, err := sync1.Sync(ctx, nm, 10*time.Second)
		waiting <- result{got, err, time.Now()}
	}()
	time.Sleep(100 * time.Millisecond)
	k2, _ := wgkey.NewPrivate()
	c2, _ := NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: e.srv.CAFingerprint()})
	start := time.Now()
	if _, _, err := c2.Enroll(ctx, EnrollRequest{Token: e.token(t, "acme", "vpc-1"), Name: "vpc-1", PublicKey: k2.Public()}); err != nil {
		t.Fatal(err)
	}
	r := <-waiting
	if r.err != nil || r.nm == nil {
		t.Fatalf("push: %v", r.err)
	}
	if lag := r.at.Sub(start); lag > time.Second {
		t.Errorf("push took %v", lag)
	}
	got, err := sync1.Sync(ctx, nm, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The same answer as a full netmap (no base held) has the same content.
	full, err := sync1.Sync(ctx, nil, 0)
	if err != nil || full == nil || !full.SameContent(got) || full.Version != got.Version {
		t.Fatalf("full netmap %+v differs from the delta-built %+v (%v)", full, got, err)
	}
	if got == nil || len(got.Peers) != 1 || got.Peers[0].PublicKey != k2.Public() || got.Peers[0].Prefixes[0].String() != "10.20.0.0/24" {
		t.Fatalf("netmap after peer joined: %+v", got)
	}
	// The netmap turns into a valid appliance config and survives a save.
	dir := t.TempDir()
	cfg, err := ConfigFromNetmap(Local{StateDir: dir, HTTPListen: ""}, got)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "office-1" || len(cfg.Peers) != 1 || cfg.Interface != DefaultInterface || cfg.ListenPort != DefaultListenPort ||
		cfg.Peers[0].Site == "" || cfg.Peers[0].Site != got.Peers[0].Site {
		t.Errorf("config %+v", cfg)
	}
	if err := SaveNetmap(dir, got); err != nil {
		t.Fatal(err)
	}
	back, err := LoadNetmap(dir)
	if err != nil || back.Version != got.Version || !back.SameContent(got) {
		t.Fatalf("saved netmap: %+v, %v", back, err)
	}
	if fi, _ := os.Stat(filepath.Join(dir, NetmapFile)); fi.Mode().Perm() != 0o600 {
		t.Errorf("netmap file mode %v", fi.Mode().Perm())
	}

	// A bad credential is refused for good.
	bad, _ := NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: e.srv.CAFingerprint(), Credential: "nope"})
	if _, err := bad.Sync(ctx, nil, 0); !errors.As(err, &ae) || ae.Status != 401 {
		t.Fatalf("bad credential: %v", err)
	}
}

func TestLoadNetmapMissingAndDamaged(t *testing.T) {
	dir := t.TempDir()
	if nm, err := LoadNetmap(dir); nm != nil || err != nil {
		t.Fatalf("missing: %v %v", nm, err)
	}
	os.WriteFile(filepath.Join(dir, NetmapFile), []byte(`{"version": "x"}`), 0o600)
	if _, err := LoadNetmap(dir); err == nil {
		t.Fatal("damaged netmap accepted")
	}
	if e, err := LoadEnrollment(dir); e != nil || err != nil {
		t.Fatalf("missing enrollment: %v %v", e, err)
	}
	os.WriteFile(filepath.Join(dir, EnrollmentFile), []byte(`{}`), 0o600)
	if _, err := LoadEnrollment(dir); err == nil {
		t.Fatal("damaged enrollment accepted")
	}
}

func TestBackoffBounds(t *testing.T) {
	for attempt := 1; attempt < 40; attempt++ {
		d := backoff(attempt, 30*time.Second)
		if d <= 0 || d > 30*time.Second {
			t.Fatalf("backoff(%d) = %v", attempt, d)
		}
	}
	if d := backoff(1, 30*time.Second); d > 250*time.Millisecond {
		t.Errorf("first retry after %v", d)
	}
}

// headerSpy records the response headers the client sees.
type headerSpy struct {
	rt   http.RoundTripper
	base []string
}

func (h *headerSpy) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := h.rt.RoundTrip(r)
	if err == nil {
		h.base = append(h.base, resp.Header.Get(netmapBaseHeader))
	}
	return resp, err
}

func TestClientAppliesDeltas(t *testing.T) {
	e := startController(t)
	e.ctl(t, "tenant", "create", "acme")
	ctx := context.Background()
	// One site each: a site holds at most two appliances.
	sites := 0
	enroll := func() (*Enrollment, *netmap.Netmap) {
		sites++
		site := "office-" + strconv.Itoa(sites)
		e.ctl(t, "site", "create", "acme", site, "--kind", "office", "--prefix", "10.10."+strconv.Itoa(sites)+".0/24")
		k, _ := wgkey.NewPrivate()
		c, _ := NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: e.srv.CAFingerprint()})
		enr, nm, err := c.Enroll(ctx, EnrollRequest{Token: e.token(t, "acme", site), PublicKey: k.Public()})
		if err != nil {
			t.Fatal(err)
		}
		return enr, nm
	}
	first, _ := enroll()
	for range 5 {
		enroll()
	}
	c, _ := NewClient(ClientOptions{Controller: e.srv.URL(), CAFingerprint: e.srv.CAFingerprint(), Credential: first.Credential})
	spy := &headerSpy{rt: c.http.Transport}
	c.http.Transport = spy
	have, err := c.Sync(ctx, nil, 0)
	if err != nil || have == nil || len(have.Peers) != 5 {
		t.Fatalf("first sync: %+v %v", have, err)
	}
	enroll() // one new peer of six: small enough for a delta
	got, err := c.Sync(ctx, have, 5*time.Second)
	if err != nil || got == nil {
		t.Fatalf("delta sync: %v", err)
	}
	if spy.base[len(spy.base)-1] != strconv.FormatUint(have.Version, 10) {
		t.Fatalf("controller did not answer with a delta against %d (base headers %q)", have.Version, spy.base)
	}
	full, err := c.Sync(ctx, nil, 0)
	if err != nil || !full.SameContent(got) || full.Version != got.Version || len(got.Peers) != 6 {
		t.Fatalf("delta-built netmap differs from the full one:\n%+v\n%+v", got, full)
	}
}
